package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/callscope/callscope/internal/kerneltest"
)

// judged is the part of an event the scope test reads.
type judged struct {
	Kind string `json:"kind"`
	Conn string `json:"conn"`
	Dst  struct {
		IP         string `json:"ip"`
		Port       uint16 `json:"port"`
		Name       string `json:"name"`
		NameSource string `json:"name_source"`
	} `json:"dst"`
	TLS *struct {
		SNI      string   `json:"sni"`
		ALPN     []string `json:"alpn"`
		Versions []string `json:"versions"`
		Server   *struct {
			Version string `json:"version"`
		} `json:"server"`
	} `json:"tls"`
	Scope *struct {
		Verdict string `json:"verdict"`
		Policy  string `json:"policy"`
		Rule    string `json:"rule"`
		Reason  string `json:"reason"`
	} `json:"scope"`
}

// TestAgentJudgesCalls runs the agent with a policy binding a cgroup, and
// checks the verdict on each kind of call from real processes: allowed by
// address, outside the scope, allowed by SNI over TLS, an SNI outside it,
// allowed by a name resolved through DNS, and a caller no policy binds.
func TestAgentJudgesCalls(t *testing.T) {
	kerneltest.Require(t)
	open := listenAny(t, "127.0.0.1:0")
	closed := listenAny(t, "[::1]:0")
	named := listenAny(t, "127.0.0.9:0")
	tlsSrv := kerneltest.NewTLSServer(t, "127.0.0.1:0")
	dns := kerneltest.NewDNSServer(t, "127.0.77.53", map[string]netip.Addr{"api.named.test": named.Addr()})

	dir := t.TempDir()
	policy := fmt.Sprintf(`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: e2e
spec:
  subject:
    cgroup: "/callscope-test-*/scoped"
  egress:
    - to: [{cidr: 127.0.0.1/32}]
      ports: [%d]
    - to: [{sni: allowed.example.test}]
      ports: [%d]
    - to: [{dns: "*.named.test"}]
      ports: [%d]
    - to: [{cidr: 127.0.77.53/32}]
      ports: [53]
---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: curl
spec:
  subject:
    exe: %q
  egress:
    - to: [{cidr: 127.0.0.0/8}]
`, open.Port(), tlsSrv.Addr.Port(), named.Port(), curlPath(t))
	if err := os.WriteFile(filepath.Join(dir, "e2e.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--policy", dir, "--pending-timeout", "1s")
	scoped := kerneltest.NewCgroup(t, "scoped")
	other := kerneltest.NewCgroup(t, "other")

	events := func(t *testing.T, pid, n int) []judged {
		t.Helper()
		a.await(t, pid, n)
		var out []judged
		for _, line := range a.lines(pid) {
			var j judged
			if err := json.Unmarshal(line, &j); err != nil {
				t.Fatal(err)
			}
			out = append(out, j)
		}
		return out
	}
	connect := func(t *testing.T, cg *kerneltest.Cgroup, dst netip.AddrPort) int {
		pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg}.Run(t)
		if len(res) != 1 || !strings.HasSuffix(res[0], "=ok") {
			t.Fatalf("connect %s: %v", dst, res)
		}
		return pid
	}

	t.Run("allowed by cidr", func(t *testing.T) {
		e := events(t, connect(t, scoped, open), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "e2e/egress[0]" || e.Scope.Policy != "e2e" {
			t.Errorf("scope %+v, want allowed by e2e/egress[0]", e.Scope)
		}
	})
	t.Run("violation", func(t *testing.T) {
		e := events(t, connect(t, scoped, closed), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "violation" || e.Scope.Policy != "e2e" || !strings.Contains(e.Scope.Reason, closed.Addr().String()) {
			t.Errorf("scope %+v, want a violation of e2e naming %s", e.Scope, closed)
		}
	})
	t.Run("bound by exe", func(t *testing.T) {
		cmd := exec.Command(curlPath(t), "-s", "-o", "/dev/null", "--max-time", "2", "http://"+open.String()+"/")
		kerneltest.InCgroup(cmd, other)
		cmd.Run() // the listener closes at once: curl fails, the connect was made
		e := events(t, cmd.Process.Pid, 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "curl/egress[0]" {
			t.Errorf("scope %+v, want allowed by curl/egress[0]", e.Scope)
		}
		cmd = exec.Command(curlPath(t), "-s", "-o", "/dev/null", "--max-time", "2", "http://["+closed.Addr().String()+"]:"+strconv.Itoa(int(closed.Port()))+"/")
		kerneltest.InCgroup(cmd, other)
		cmd.Run()
		e = events(t, cmd.Process.Pid, 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "violation" || e.Scope.Policy != "curl" {
			t.Errorf("scope %+v, want a violation of curl", e.Scope)
		}
	})
	t.Run("unscoped", func(t *testing.T) {
		e := events(t, connect(t, other, open), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "unscoped" {
			t.Errorf("scope %+v, want unscoped", e.Scope)
		}
	})
	for _, tc := range []struct{ sni, verdict string }{{"allowed.example.test", "allowed"}, {"elsewhere.example.test", "violation"}} {
		t.Run("tls "+tc.sni, func(t *testing.T) {
			pid := kerneltest.TLSClient{Addr: tlsSrv.Addr, ServerName: tc.sni, ALPN: []string{"h2"}, Cgroup: scoped}.Run(t)
			evs := events(t, pid, 2)
			if evs[0].Kind != "connect" || evs[0].Scope == nil || evs[0].Scope.Verdict != "pending" {
				t.Errorf("connect %+v, want a pending verdict first", evs[0])
			}
			h := evs[1]
			if h.Kind != "tls" || h.Conn != evs[0].Conn || h.TLS == nil || h.TLS.SNI != tc.sni || h.Dst.Name != tc.sni || h.Dst.NameSource != "sni" {
				t.Fatalf("tls event %+v, want SNI %s on conn %s", h, tc.sni, evs[0].Conn)
			}
			if h.Scope == nil || h.Scope.Verdict != tc.verdict {
				t.Errorf("tls scope %+v, want %s", h.Scope, tc.verdict)
			}
			if len(h.TLS.Versions) == 0 || h.TLS.Versions[0] != "1.3" || h.TLS.Server == nil || h.TLS.Server.Version != "1.3" {
				t.Errorf("tls %+v, want 1.3 offered and chosen", h.TLS)
			}
		})
	}
	t.Run("no ClientHello", func(t *testing.T) {
		// A plain connect to the port only an sni rule opens: pending, then
		// closed by a verdict event once the timeout passes.
		pid := connect(t, scoped, tlsSrv.Addr)
		evs := events(t, pid, 2)
		c, v := evs[0], evs[1]
		if c.Kind != "connect" || c.Scope == nil || c.Scope.Verdict != "pending" {
			t.Errorf("connect %+v, want pending", c)
		}
		if v.Kind != "verdict" || v.Conn != c.Conn || v.Scope == nil || v.Scope.Verdict != "violation" || !strings.Contains(v.Scope.Reason, "ClientHello") {
			t.Errorf("closing event %+v (scope %+v), want a violation on conn %s", v, v.Scope, c.Conn)
		}
	})
	t.Run("allowed by dns", func(t *testing.T) {
		pid := kerneltest.Resolve{Server: dns.Addr, Name: "api.named.test", Port: named.Port(), Cgroup: scoped}.Run(t)
		evs := events(t, pid, 1) // the query over UDP is no connect event
		var e *judged
		for i := range evs {
			if evs[i].Kind == "connect" && evs[i].Dst.Port == named.Port() {
				e = &evs[i]
			}
		}
		if e == nil {
			t.Fatalf("no connect to %s in %+v", named, evs)
		}
		if e.Dst.Name != "api.named.test" || e.Dst.NameSource != "dns" {
			t.Errorf("dst %+v, want named api.named.test by dns", e.Dst)
		}
		if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "e2e/egress[2]" {
			t.Errorf("scope %+v, want allowed by e2e/egress[2]", e.Scope)
		}
	})
}

// listenAny accepts on addr and closes each connection at once.
func listenAny(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	return serve(t, addr, func(c net.Conn) { c.Close() })
}

// serve accepts on addr until the test ends, and hands each connection
// to handle on a goroutine of its own.
func serve(t *testing.T, addr string, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func curlPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is needed: %v", err)
	}
	return p
}
