package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/callscope/callscope/scope"
	"github.com/callscope/callscope/scope/learn"
)

func TestLearnFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--since", "yesterday"},
		{"--until", "2026-11-27"},
		{"--max-prefix", "24"},
		{"--max-prefix", "33,64"},
		{"--max-prefix", "24,8"},
		{"--max-pairs", "0"},
		{"--since", "2026-11-27T05:00:00Z", "--until", "2026-11-27T04:00:00Z"},
		{"/nonexistent/events.jsonl"},
	} {
		var stdout, stderr bytes.Buffer
		if err := run(append([]string{"learn"}, args...), &stdout, &stderr); err == nil {
			t.Errorf("learn %q: no error", args)
		}
	}
	if v4, v6, err := parseMaxPrefix("/16, /48"); err != nil || v4 != 16 || v6 != 48 {
		t.Errorf("parseMaxPrefix: %d %d %v", v4, v6, err)
	}
}

// TestLearnCommand runs learn on the example events, to stdout and to a
// folder, and checks the folder with policy check.
func TestLearnCommand(t *testing.T) {
	events := filepath.Join("..", "..", "scope", "learn", "testdata", "example.jsonl")
	want, err := os.ReadFile(filepath.Join("..", "..", "scope", "learn", "testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run([]string{"learn", events}, &stdout, &stderr); err != nil {
		t.Fatalf("learn: %v: %s", err, stderr.String())
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout.Bytes(), want)
	}
	if s := stderr.String(); !strings.Contains(s, "10 lines read, 6 calls learnt") || !strings.Contains(s, "1 malformed JSON, 1 unknown schema") || !strings.Contains(s, "kernel/ring_buffer_full 37") {
		t.Errorf("stderr: %s", s)
	}
	dir := t.TempDir()
	stdout.Reset()
	stderr.Reset()
	if err := run([]string{"learn", "--out", dir, "--since", "2026-11-27T05:11:28Z", events}, &stdout, &stderr); err != nil {
		t.Fatalf("learn: %v: %s", err, stderr.String())
	}
	if stdout.Len() > 0 || !strings.Contains(stderr.String(), "1 outside window") {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if len(files) != 2 {
		t.Errorf("files %q, want 2", files)
	}
	stdout.Reset()
	if err := run([]string{"policy", "check", dir}, &stdout, &stderr); err != nil || !strings.Contains(stdout.String(), "ok: 2 CallScope(s)") {
		t.Errorf("policy check: %v: %s%s", err, stdout.String(), stderr.String())
	}
}

// TestLearnFromKernel learns from real calls: the agent reports them,
// learn drafts their CallScope, which policy check passes and which judges
// none of them a violation, in process and when the agent runs with it and
// the same calls are made again.
func TestLearnFromKernel(t *testing.T) {
	kerneltest.Require(t)
	// Two addresses on one port, which merge into a /31, and a third on
	// it that refuses; a TLS server; three names under learn.test, which
	// make a wildcard.
	port := listenAny(t, "127.0.0.2:0").Port()
	ap := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), port) }
	listenAny(t, ap("127.0.0.3").String())
	if ln, err := net.Listen("tcp", ap("127.0.0.4").String()); err == nil {
		ln.Close() // nothing listens there: refused
	}
	named := listenAny(t, "127.0.0.9:0")
	tlsSrv := kerneltest.NewTLSServer(t, "127.0.0.1:0")
	names := []string{"a.learn.test", "b.learn.test", "c.learn.test"}
	dnsNames := map[string]netip.Addr{}
	for _, n := range names {
		dnsNames[n] = named.Addr()
	}
	dns := kerneltest.NewDNSServer(t, "127.0.77.54", dnsNames)
	cg := kerneltest.NewCgroup(t, "learn")

	// calls makes the calls and returns the events of each, as lines.
	calls := func(t *testing.T, a *agent) [][]byte {
		t.Helper()
		var lines [][]byte
		take := func(pid, n int) {
			a.await(t, pid, n)
			lines = append(lines, a.lines(pid)...)
		}
		pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{ap("127.0.0.2"), ap("127.0.0.3"), ap("127.0.0.4")}, Cgroup: cg}.Run(t)
		if len(res) != 3 || !strings.HasSuffix(res[0], "=ok") || !strings.HasSuffix(res[1], "=ok") || strings.HasSuffix(res[2], "=ok") {
			t.Fatalf("connects: %v, want two made and one refused", res)
		}
		take(pid, 3)
		take(kerneltest.TLSClient{Addr: tlsSrv.Addr, ServerName: "api.learn.test", ALPN: []string{"h2"}, Cgroup: cg}.Run(t), 2)
		for _, n := range names {
			take(kerneltest.Resolve{Server: dns.Addr, Name: n, Port: named.Port(), Cgroup: cg}.Run(t), 1)
		}
		return lines
	}

	a := startAgent(t)
	lines := calls(t, a)
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	a.cmd.Wait()
	dir := t.TempDir()
	events := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(events, append(bytes.Join(lines, []byte("\n")), '\n'), 0o644); err != nil {
		t.Fatal(err)
	}

	policies := filepath.Join(dir, "policies")
	out, err := exec.Command(binary(t), "learn", "--out", policies, events).CombinedOutput()
	if err != nil {
		t.Fatalf("learn: %v: %s", err, out)
	}
	if !strings.Contains(string(out), strconv.Itoa(len(lines))+" lines read, 7 calls learnt (with 1 tls or verdict events of the same connections, 1 of them naming the call by SNI)") {
		t.Errorf("learn said: %s", out)
	}
	files, _ := filepath.Glob(filepath.Join(policies, "*.yaml"))
	if len(files) != 1 {
		t.Fatalf("learnt %q, want one file: the helpers share an exe", files)
	}
	draft, _ := os.ReadFile(files[0])
	t.Logf("learnt:\n%s", draft)
	for _, want := range []string{
		"- cidr: 127.0.0.2/31  # 2 addresses (127.0.0.2, 127.0.0.3), 2 calls",
		"- cidr: 127.0.0.4/32  # 1 call",
		"- sni: api.learn.test  # 1 call",
		`- dns: "*.learn.test"  # 3 names (a.learn.test, b.learn.test, c.learn.test), 3 calls`,
		"ports: [" + strconv.Itoa(int(port)) + "]",
		"ports: [" + strconv.Itoa(int(tlsSrv.Addr.Port())) + "]",
		"ports: [" + strconv.Itoa(int(named.Port())) + "]",
	} {
		if !strings.Contains(string(draft), want) {
			t.Errorf("the draft has no %q", want)
		}
	}
	if out, err := exec.Command(binary(t), "policy", "check", policies).CombinedOutput(); err != nil {
		t.Fatalf("policy check: %v: %s", err, out)
	}

	// In process, judged against the events it was learnt from.
	loaded, err := scope.Load(policies)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(events)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	judgements, err := learn.Judge(loaded, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(judgements) != 7 {
		t.Errorf("%d judgements, want 7 (6 connects, and the tls event that settles the seventh)", len(judgements))
	}
	for _, j := range judgements {
		if j.Verdict != scope.Allowed {
			t.Errorf("line %d (%s): %s: %s", j.Line, j.Kind, j.Verdict, j.Reason)
		}
	}

	// The agent, with the draft, judges the same calls again.
	a = startAgent(t, "--policy", policies, "--pending-timeout", "1s")
	for _, line := range calls(t, a) {
		var e judged
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		switch {
		case e.Scope == nil:
			t.Errorf("no verdict: %s", line)
		case e.Kind == "connect" && e.Dst.Port == tlsSrv.Addr.Port() && e.Scope.Verdict == "pending":
			// Settled by its tls event.
		case e.Scope.Verdict != "allowed":
			t.Errorf("%s %s: %s (%s)", e.Kind, e.Dst.IP, e.Scope.Verdict, e.Scope.Reason)
		}
	}
}
