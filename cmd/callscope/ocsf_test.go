package main

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/callscope/callscope/internal/ocsfcheck"
)

// TestAgentOCSF runs the agent with --format ocsf and checks the records
// of real connects, one established and one refused, against the OCSF
// schema fixture.
func TestAgentOCSF(t *testing.T) {
	kerneltest.Require(t)
	schema, err := ocsfcheck.Load(filepath.Join("..", "..", "exporter", "testdata", "ocsf", "schema-"+exporter.OCSFVersion+".json"))
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--format", "ocsf")
	cg := kerneltest.NewCgroup(t, "app.slice/e2e-ocsf")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open := ln.Addr().(*net.TCPAddr).AddrPort()
	closed := netip.MustParseAddrPort(freePort(t)) // nothing listens there any more

	child := kerneltest.Connect{Addrs: []netip.AddrPort{open, closed}, Cgroup: cg, Linger: true}.Command(t)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	res, _ := io.ReadAll(out)
	t.Logf("helper: %q", res)
	a.await(t, child.Process.Pid, 2)
	stdin.Close()
	child.Wait()

	activities := map[uint16]int{}
	for _, line := range a.lines(child.Process.Pid) {
		t.Logf("%s", line)
		if err := schema.Check(line); err != nil {
			t.Errorf("not valid OCSF %s:\n%v\n%s", exporter.OCSFVersion, err, line)
		}
		var r struct {
			ClassUID   int `json:"class_uid"`
			ActivityID int `json:"activity_id"`
			Metadata   struct {
				UID      string `json:"uid"`
				Sequence uint64 `json:"sequence"`
				Product  struct {
					Name string `json:"name"`
				} `json:"product"`
			} `json:"metadata"`
			Device struct {
				Hostname string `json:"hostname"`
			} `json:"device"`
			DstEndpoint struct {
				IP   string `json:"ip"`
				Port uint16 `json:"port"`
			} `json:"dst_endpoint"`
			ConnectionInfo struct {
				UID string `json:"uid"`
			} `json:"connection_info"`
			Actor struct {
				Process struct {
					PID  int `json:"pid"`
					File struct {
						Path string `json:"path"`
					} `json:"file"`
				} `json:"process"`
			} `json:"actor"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if r.ClassUID != 4001 || r.Device.Hostname != "test-node" || r.Metadata.Product.Name != "callscope" ||
			r.Metadata.Sequence == 0 || r.Metadata.UID == "" || r.ConnectionInfo.UID == "" || r.Actor.Process.File.Path == "" {
			t.Errorf("record: %+v\n%s", r, line)
		}
		if r.DstEndpoint.IP != "127.0.0.1" {
			t.Errorf("dst_endpoint %+v", r.DstEndpoint)
		}
		activities[r.DstEndpoint.Port] = r.ActivityID
	}
	if activities[open.Port()] != 1 || activities[closed.Port()] != 5 {
		t.Errorf("activities by port %v: want Open (1) to %d, Refuse (5) to %d", activities, open.Port(), closed.Port())
	}
}
