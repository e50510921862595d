package exporter

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/internal/ocsfcheck"
	"github.com/callscope/callscope/scope"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/ocsf")

// ocsfSchema is the fixture every OCSF record of the tests is checked
// against.
func ocsfSchema(t testing.TB) *ocsfcheck.Schema {
	t.Helper()
	s, err := ocsfcheck.Load(filepath.Join("testdata", "ocsf", "schema-"+OCSFVersion+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ocsfCases are representative events, one golden file each.
func ocsfCases() []struct {
	name string
	ev   scope.Event
} {
	established := connectEvent()
	established.DstName, established.NameSource = "api.stripe.com", enrich.NameSourceDNS

	refused := connectEvent()
	refused.Outcome, refused.Errno = collector.OutcomeRefused, unix.ECONNREFUSED

	timeout := connectEvent()
	timeout.Outcome, timeout.Errno = collector.OutcomeTimeout, unix.ETIMEDOUT
	timeout.Dst = netip.MustParseAddrPort("[2001:db8::15]:443")
	timeout.Src = netip.MustParseAddrPort("[2001:db8::7]:43210")

	reset := connectEvent()
	reset.Outcome, reset.Errno = collector.OutcomeReset, unix.ECONNRESET

	unsent := connectEvent()
	unsent.Outcome, unsent.Errno = collector.OutcomeFailed, unix.EPERM
	unsent.Src = netip.AddrPort{}
	unsent.Process = nil

	tls := connectEvent()
	tls.Kind, tls.Outcome = collector.KindTLS, collector.OutcomeUnknown
	tls.DstName, tls.NameSource = "api.stripe.com", enrich.NameSourceSNI
	tls.Hello = &tlshello.ClientHello{
		LegacyVersion: 0x0303, SNI: "api.stripe.com", ALPN: []string{"h2", "http/1.1"},
		Versions: []uint16{0x0304, 0x0303}, CipherSuites: 13, PostQuantum: true,
		JA4: "t13d1312h2_f57a46bbacb6_ab7e3b40a677",
	}
	tls.ServerHello = &tlshello.ServerHello{Version: 0x0304, CipherSuite: 0x1301}

	legacy := tls
	legacy.Hello = &tlshello.ClientHello{LegacyVersion: 0x0302, CipherSuites: 4, JA4: "t11i040000_1d37bd780c83_000000000000"}
	legacy.ServerHello = nil
	legacy.DstName, legacy.NameSource = "", ""

	pod := connectEvent()
	pod.Cgroup = enrich.CgroupInfo{
		ContainerID: "3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f",
		Runtime:     "containerd", PodUID: "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c",
	}
	pod.Pod = &enrich.Pod{UID: "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c", Namespace: "payments", Name: "billing-7d9f-x2",
		ServiceAccount: "billing", Workload: "Deployment/billing"}
	pod.Callee = &enrich.Callee{Namespace: "ledger", Service: "ledger", Pod: "ledger-0", ServiceAccount: "ledger",
		Workload: "StatefulSet/ledger", Identity: "spiffe://cluster.local/ns/ledger/sa/ledger"}

	clusterIP := connectEvent()
	clusterIP.Callee = &enrich.Callee{Namespace: "ledger", Service: "ledger"}

	verdict := connectEvent()
	verdict.Kind = collector.KindVerdict

	human := connectEvent()
	human.TTY, human.LoginUID = true, collector.LoginUIDUnset

	return []struct {
		name string
		ev   scope.Event
	}{
		{"established", scope.Event{Event: established}},
		{"refused", scope.Event{Event: refused}},
		{"timeout_ipv6", scope.Event{Event: timeout}},
		{"reset", scope.Event{Event: reset}},
		{"failed_unsent", scope.Event{Event: unsent}},
		{"tls", scope.Event{Event: tls, Scope: scope.Judgement{Verdict: scope.Allowed, Scopes: "billing-egress",
			Rule: "billing-egress/egress[0]", Via: scope.ViaCIDR}}},
		{"tls_legacy_findings", scope.Event{Event: legacy, Findings: 1<<scope.LegacyTLS | 1<<scope.NoSNI}},
		{"pod_callee", scope.Event{Event: pod, Scope: scope.Judgement{Verdict: scope.Unscoped},
			Findings: 1 << scope.CrossEnvironment}},
		{"cluster_ip_callee", scope.Event{Event: clusterIP, Scope: scope.Judgement{Verdict: scope.Pending, Scopes: "billing-egress"}}},
		{"violation_findings", scope.Event{Event: human, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress"},
			Findings: 1<<scope.Plaintext | 1<<scope.HumanUse}},
		{"verdict", scope.Event{Event: verdict, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress"}}},
		{"loss", lossEvent(eventTime, 37, collector.StageKernel, collector.ReasonRingBufferFull)},
	}
}

// TestOCSFGolden: each representative event's record is what its golden
// file holds, and valid against the schema. go test -run TestOCSFGolden
// -update rewrites them.
func TestOCSFGolden(t *testing.T) {
	s := ocsfSchema(t)
	for _, c := range ocsfCases() {
		t.Run(c.name, func(t *testing.T) {
			enc := NewOCSFEncoder("worker-1", "3f2a9c", "v1.2.3")
			line := enc.Append(nil, &c.ev)
			decodeLine(t, line)
			if err := s.Check(line); err != nil {
				t.Errorf("not valid OCSF %s:\n%v\n%s", OCSFVersion, err, line)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, line, "", "  "); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "ocsf", c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test -run TestOCSFGolden -update writes it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("record differs from %s (-update rewrites it):\n%s", golden, pretty.Bytes())
			}
		})
	}
}

// TestOCSFSequence: records are numbered as the contract's events are,
// losses included, so a consumer tells a gap from silence by
// metadata.sequence.
func TestOCSFSequence(t *testing.T) {
	enc := NewOCSFEncoder("worker-1", "inst", "")
	var buf []byte
	for i, c := range ocsfCases() {
		buf = enc.Append(buf[:0], &c.ev)
		var r struct {
			Metadata struct {
				UID      string `json:"uid"`
				Sequence uint64 `json:"sequence"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(buf, &r); err != nil {
			t.Fatal(err)
		}
		want := uint64(i + 1)
		if r.Metadata.Sequence != want || r.Metadata.UID != "inst-"+strconv.FormatUint(want, 10) {
			t.Errorf("%s: uid %q sequence %d, want inst-%d and %d", c.name, r.Metadata.UID, r.Metadata.Sequence, want, want)
		}
	}
	if enc.Seq() != uint64(len(ocsfCases())) {
		t.Errorf("Seq() = %d", enc.Seq())
	}
}

// TestOCSFEscaping: whatever bytes workloads chose, records stay valid
// JSON and valid OCSF.
func TestOCSFEscaping(t *testing.T) {
	s := ocsfSchema(t)
	ev := connectEvent()
	ev.Comm = comm("a\"b\\c\n\x01")
	ev.Process.Exe = "/tmp/we\"ird\n\xff"
	ev.Process.Cmdline = []string{"x", "\u2028", "\"q\""}
	ev.DstName = "evil\"name"
	ev.Src = netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("et\"h0"), 1)
	enc := NewOCSFEncoder("node\"x", "inst\n", "v\"1")
	line := enc.Append(nil, &scope.Event{Event: ev})
	m := decodeLine(t, line)
	if err := s.Check(line); err != nil {
		t.Errorf("%v\n%s", err, line)
	}
	p := m["actor"].(obj)["process"].(obj)
	if p["name"] != "a\"b\\c\n\x01" || p["file"].(obj)["path"] != "/tmp/we\"ird\n\ufffd" {
		t.Errorf("process decoded as %v", p)
	}
}

// TestOCSFCheckCatches: the check fails records that break the schema,
// so that the golden tests mean something.
func TestOCSFCheckCatches(t *testing.T) {
	s := ocsfSchema(t)
	enc := NewOCSFEncoder("worker-1", "inst", "v1")
	ev := scope.Event{Event: connectEvent()}
	good := enc.Append(nil, &ev)
	for _, c := range []struct{ name, from, to string }{
		{"unknown attribute", `"timezone_offset":0`, `"timezone_offset":0,"bogus":1`},
		{"unknown nested attribute", `"direction_id":2`, `"direction_id":2,"cookie":"x"`},
		{"missing required", `"severity_id":1,`, ``},
		{"wrong type", `"sequence":1`, `"sequence":"1"`},
		{"integer not a string", `"uid":"1000"`, `"uid":1000`},
		{"enum value", `"direction_id":2`, `"direction_id":7`},
		{"type_uid", `"type_uid":400101`, `"type_uid":400102`},
		{"version", `"version":"` + OCSFVersion + `"`, `"version":"1.7.0"`},
		{"profile not named", `"host",`, ``},
		{"port range", `"port":443`, `"port":70000`},
	} {
		bad := bytes.Replace(good, []byte(c.from), []byte(c.to), 1)
		if bytes.Equal(bad, good) {
			t.Fatalf("%s: %q not in %s", c.name, c.from, good)
		}
		if err := s.Check(bad); err == nil {
			t.Errorf("%s: check passes %s", c.name, bad)
		}
	}
	if err := s.Check(bytes.Replace(good, []byte(`"kind":"connect"`), []byte(`"kind":"connect","anything":{"x":[1]}`), 1)); err != nil {
		t.Errorf("unmapped is checked: %v", err)
	}
}

func TestOCSFAllocs(t *testing.T) {
	for _, c := range ocsfCases() {
		enc := NewOCSFEncoder("worker-1", "inst", "v1")
		buf := enc.Append(make([]byte, 0, 8192), &c.ev)
		if allocs := testing.AllocsPerRun(1000, func() { buf = enc.Append(buf[:0], &c.ev) }); allocs != 0 {
			t.Errorf("%s: Append allocates %v times per event, want 0", c.name, allocs)
		}
	}
}

// BenchmarkOCSF is BenchmarkEncode's event as an OCSF record.
func BenchmarkOCSF(b *testing.B) {
	ev := connectEvent()
	enc := NewOCSFEncoder("worker-1", "3f2a9c", "v1.2.3")
	buf := enc.Append(make([]byte, 0, 4096), &scope.Event{Event: ev})
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.Append(buf[:0], &scope.Event{Event: ev})
	}
}

// BenchmarkOCSFTLS is a tls event with a verdict and findings, the most
// the encoder writes.
func BenchmarkOCSFTLS(b *testing.B) {
	var ev scope.Event
	for _, c := range ocsfCases() {
		if c.name == "tls" {
			ev = c.ev
		}
	}
	ev.Findings = 1 << scope.LegacyTLS
	enc := NewOCSFEncoder("worker-1", "3f2a9c", "v1.2.3")
	buf := enc.Append(make([]byte, 0, 4096), &ev)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.Append(buf[:0], &ev)
	}
}

// BenchmarkEncodeTLS is BenchmarkOCSFTLS's event in the contract's format.
func BenchmarkEncodeTLS(b *testing.B) {
	var ev scope.Event
	for _, c := range ocsfCases() {
		if c.name == "tls" {
			ev = c.ev
		}
	}
	ev.Findings = 1 << scope.LegacyTLS
	enc := NewEncoder("worker-1", "3f2a9c")
	buf := enc.Append(make([]byte, 0, 4096), &ev)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.Append(buf[:0], &ev)
	}
}

// TestOCSFCallerRuns: what is kept of a caller's last record is reused
// only while its facts are the same: each record equals a fresh
// encoder's.
func TestOCSFCallerRuns(t *testing.T) {
	enc := NewOCSFEncoder("worker-1", "i", "v1")
	base := connectEvent()
	steps := []func(ev *enrich.Event){
		func(ev *enrich.Event) {},
		func(ev *enrich.Event) { ev.TID++ },
		func(ev *enrich.Event) { ev.Comm = comm("worker") },
		func(ev *enrich.Event) { ev.UID, ev.GID = 0, 0 },
		func(ev *enrich.Event) { ev.Identity = "unit:billing.service" },
		func(ev *enrich.Event) { ev.CgroupPath, ev.CgroupID = "/system.slice/billing.service", 1 },
		func(ev *enrich.Event) { ev.Cgroup = enrich.CgroupInfo{ContainerID: "ab", Runtime: "docker"} },
		func(ev *enrich.Event) { ev.Pod = &enrich.Pod{Namespace: "ns", Name: "p"} },
		func(ev *enrich.Event) { ev.Process = &enrich.Process{Exe: "/bin/other"} },
	}
	for i, step := range steps {
		ev := base
		step(&ev)
		for range 2 {
			enc.seq = 0
			got := enc.Append(nil, &scope.Event{Event: ev})
			want := NewOCSFEncoder("worker-1", "i", "v1").Append(nil, &scope.Event{Event: ev})
			if !bytes.Equal(got, want) {
				t.Errorf("step %d: kept caller facts out of date:\n got %s\nwant %s", i, got, want)
			}
		}
	}
}

// TestOCSFReadmeExample: the README's OCSF record is valid against the
// schema.
func TestOCSFReadmeExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "### OCSF records")
	_, example, ok2 := strings.Cut(section, "```json\n")
	example, _, ok3 := strings.Cut(example, "\n```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README has no OCSF example record")
	}
	if err := ocsfSchema(t).Check([]byte(example)); err != nil {
		t.Errorf("README's OCSF example: %v", err)
	}
}
