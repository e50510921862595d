package exporter

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/internal/eventschema"
	"github.com/callscope/callscope/scope"
)

var eventTime = time.Date(2026, 11, 27, 4, 32, 4, 123456789, time.UTC).UnixNano()

func comm(s string) (c [16]byte) {
	copy(c[:], s)
	return c
}

// connectEvent is a fully known IPv4 connect that tests vary.
func connectEvent() enrich.Event {
	return enrich.Event{
		Event: collector.Event{
			Kind:      collector.KindConnect,
			Outcome:   collector.OutcomeEstablished,
			Time:      eventTime,
			Cookie:    0x1a2b3c,
			Src:       netip.MustParseAddrPort("10.0.3.7:43210"),
			Dst:       netip.MustParseAddrPort("10.96.0.15:443"),
			PID:       4242,
			TID:       4243,
			UID:       1000,
			GID:       1001,
			Comm:      comm("billing"),
			CgroupID:  9731,
			ProcStart: 123,
			NetNS:     4026531840,
			LoginUID:  collector.LoginUIDUnset,
		},
		Process: &enrich.Process{
			Exe:     "/app/billing",
			Cmdline: []string{"/app/billing", "--prod"},
			PPID:    1,
		},
		CgroupPath: "/kubepods.slice/billing.scope",
		Identity:   "spiffe://cluster.local/ns/payments/sa/billing",
	}
}

type obj = map[string]any

// decodeLine checks that line is one JSON object ending in a single '\n'
// and returns it decoded.
func decodeLine(t *testing.T, line []byte) obj {
	t.Helper()
	if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("line does not end in exactly one newline: %q", line)
	}
	if !json.Valid(line) {
		t.Fatalf("invalid JSON: %q", line)
	}
	if err := eventschema.Validate(line); bytes.HasPrefix(line, []byte(`{"schema":"`+Schema+`"`)) && err != nil {
		t.Errorf("%v\nline %s", err, line)
	}
	var m obj
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	return m
}

// TestEncoderProcessRuns: the process member kept from a process's last
// event is reused only while the kernel's facts are the same.
func TestEncoderProcessRuns(t *testing.T) {
	enc := NewEncoder("worker-1", "i")
	base := connectEvent()
	type facts struct {
		tid, uid, gid uint32
		comm          string
		tty           bool
		loginUID      uint32
	}
	unset := collector.LoginUIDUnset
	steps := []facts{
		{4243, 1000, 1001, "billing", false, unset},
		{4243, 1000, 1001, "billing", false, unset},
		{4244, 1000, 1001, "billing", false, unset},
		{4244, 0, 1001, "billing", false, unset},
		{4244, 0, 0, "billing", false, unset},
		{4244, 0, 0, "billing-2", false, unset},
		{4243, 1000, 1001, "billing", false, unset},
		{4243, 1000, 1001, "billing", true, unset},
		{4243, 1000, 1001, "billing", true, 0},
		{4243, 1000, 1001, "billing", false, 1000},
		{4243, 1000, 1001, "billing", false, unset},
	}
	for i, f := range steps {
		ev := base // the same *Process throughout
		ev.TID, ev.UID, ev.GID, ev.Comm = f.tid, f.uid, f.gid, comm(f.comm)
		ev.TTY, ev.LoginUID = f.tty, f.loginUID
		line := enc.Append(nil, &scope.Event{Event: ev})
		got := decodeLine(t, line)["process"].(obj)
		want := obj{
			"pid": float64(4242), "tid": float64(f.tid), "comm": f.comm, "exe": "/app/billing",
			"cmdline": []any{"/app/billing", "--prod"}, "uid": float64(f.uid), "gid": float64(f.gid), "ppid": float64(1),
		}
		if f.tty {
			want["tty"] = true
		}
		if f.loginUID != unset {
			want["login_uid"] = float64(f.loginUID)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("step %d: process %v, want %v", i, got, want)
		}
	}
	// Another process with the same kernel facts gets its own member.
	other := base
	other.Process = &enrich.Process{Exe: "/app/other", PPID: 7}
	got := decodeLine(t, enc.Append(nil, &scope.Event{Event: other}))["process"].(obj)
	if got["exe"] != "/app/other" || got["ppid"] != float64(7) || got["cmdline"] != nil {
		t.Errorf("other process: %v", got)
	}
}

// TestEncoderScopeRuns: the scope member's head kept from the last verdict
// is reused only while verdict, scopes, rule and policy version are the
// same.
func TestEncoderScopeRuns(t *testing.T) {
	enc := NewEncoder("", "i")
	steps := []scope.Judgement{
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[1]", Via: scope.ViaCIDR},
		{Verdict: scope.Allowed, Scopes: "a,b", Rule: "a/egress[1]", Via: scope.ViaCIDR},
		{Verdict: scope.Violation, Scopes: "a,b"},
		{Verdict: scope.Pending, Scopes: "a,b"},
		{Verdict: scope.Unscoped},
		{},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR, PolicyVersion: "3f2a9c01b7de"},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR, PolicyVersion: "0c5e11a2f4d8"},
		{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR},
	}
	for i, j := range steps {
		ev := &scope.Event{Event: connectEvent(), Scope: j}
		line := decodeLine(t, enc.Append(nil, ev))
		got, ok := line["scope"].(obj)
		if j.Verdict == 0 {
			if ok {
				t.Errorf("step %d: scope %v for no verdict", i, got)
			}
			continue
		}
		want := obj{"verdict": j.Verdict.String()}
		if j.Scopes != "" {
			want["policy"] = j.Scopes
		}
		if j.Rule != "" {
			want["rule"] = j.Rule
		}
		if j.PolicyVersion != "" {
			want["policy_version"] = j.PolicyVersion
		}
		if r := scope.AppendReason(nil, ev); len(r) > 0 {
			want["reason"] = string(r)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("step %d: scope %v, want %v", i, got, want)
		}
	}
}

// TestEncoderAddressRuns: the source address and the destination kept
// written from one event to the next are written anew when any part of
// them changes, the zone included.
func TestEncoderAddressRuns(t *testing.T) {
	enc := NewEncoder("", "i")
	steps := []struct{ src, dst string }{
		{"10.0.3.7:43210", "10.96.0.15:443"},
		{"10.0.3.7:43211", "10.96.0.15:443"},  // the next connect: a new source port
		{"10.0.3.8:43211", "10.96.0.15:443"},  // another source address
		{"10.0.3.8:43211", "10.96.0.15:8443"}, // another port of the same destination
		{"10.0.3.8:43211", "10.96.0.16:8443"}, // another destination, same port
		{"[fe80::1%eth0]:5000", "[fe80::2%eth0]:443"},
		{"[fe80::1%eth1]:5000", "[fe80::2%eth1]:443"}, // only the zones differ
		{"", "[fe80::2%eth1]:443"},                    // failed before a source was bound
		{"10.0.3.7:43210", "10.96.0.15:443"},
	}
	member := func(s string) any {
		if s == "" {
			return nil
		}
		ap := netip.MustParseAddrPort(s)
		return obj{"ip": ap.Addr().String(), "port": float64(ap.Port())}
	}
	for i, step := range steps {
		ev := &scope.Event{Event: connectEvent()}
		ev.Src = netip.AddrPort{}
		if step.src != "" {
			ev.Src = netip.MustParseAddrPort(step.src)
		}
		ev.Dst = netip.MustParseAddrPort(step.dst)
		line := decodeLine(t, enc.Append(nil, ev))
		if got, want := line["src"], member(step.src); !reflect.DeepEqual(got, want) {
			t.Errorf("step %d: src %v, want %v", i, got, want)
		}
		dst, _ := line["dst"].(obj)
		delete(dst, "name")
		delete(dst, "name_source")
		if want := member(step.dst); !reflect.DeepEqual(dst, want) {
			t.Errorf("step %d: dst %v, want %v", i, dst, want)
		}
	}
}

func TestEncoderAppend(t *testing.T) {
	header := func(seq int, kind string) obj {
		return obj{
			"schema": "callscope/v1",
			"id":     "inst-" + strconv.Itoa(seq),
			"seq":    float64(seq),
			"time":   "2026-11-27T04:32:04.123456789Z",
			"node":   "worker-1",
			"kind":   kind,
		}
	}
	with := func(m obj, extra obj) obj {
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	fullProcess := obj{
		"pid": 4242.0, "tid": 4243.0, "comm": "billing", "exe": "/app/billing",
		"cmdline": []any{"/app/billing", "--prod"}, "uid": 1000.0, "gid": 1001.0, "ppid": 1.0,
	}
	cgroup := obj{"id": 9731.0, "path": "/kubepods.slice/billing.scope"}
	identity := "spiffe://cluster.local/ns/payments/sa/billing"

	tests := []struct {
		name string
		ev   func() enrich.Event
		want func(seq int) obj
	}{{
		name: "ipv4 established",
		ev:   connectEvent,
		want: func(seq int) obj {
			return with(header(seq, "connect"), obj{
				"conn": "00000000001a2b3c", "proto": "tcp", "family": "ipv4", "netns": 4026531840.0,
				"src":      obj{"ip": "10.0.3.7", "port": 43210.0},
				"dst":      obj{"ip": "10.96.0.15", "port": 443.0},
				"outcome":  "established",
				"process":  fullProcess,
				"cgroup":   cgroup,
				"identity": identity,
			})
		},
	}, {
		name: "ipv6 refused",
		ev: func() enrich.Event {
			ev := connectEvent()
			ev.Src = netip.MustParseAddrPort("[2001:db8:0:0::7]:50000")
			ev.Dst = netip.MustParseAddrPort("[2001:0db8::0:15]:443")
			ev.Outcome = collector.OutcomeRefused
			ev.Errno = unix.ECONNREFUSED
			ev.Cookie = 0xffffffffffffffff
			return ev
		},
		want: func(seq int) obj {
			return with(header(seq, "connect"), obj{
				"conn": "ffffffffffffffff", "proto": "tcp", "family": "ipv6", "netns": 4026531840.0,
				"src":      obj{"ip": "2001:db8::7", "port": 50000.0},
				"dst":      obj{"ip": "2001:db8::15", "port": 443.0},
				"outcome":  "refused",
				"error":    "ECONNREFUSED",
				"process":  fullProcess,
				"cgroup":   cgroup,
				"identity": identity,
			})
		},
	}, {
		name: "failed before SYN, root",
		ev: func() enrich.Event {
			ev := connectEvent()
			ev.Src = netip.AddrPort{}
			ev.Outcome = collector.OutcomeUnreachable
			ev.Errno = unix.ENETUNREACH
			ev.UID, ev.GID = 0, 0
			return ev
		},
		want: func(seq int) obj {
			p := with(obj{}, fullProcess)
			p["uid"], p["gid"] = 0.0, 0.0
			return with(header(seq, "connect"), obj{
				"conn": "00000000001a2b3c", "proto": "tcp", "family": "ipv4", "netns": 4026531840.0,
				"dst":      obj{"ip": "10.96.0.15", "port": 443.0},
				"outcome":  "unreachable",
				"error":    "ENETUNREACH",
				"process":  p,
				"cgroup":   cgroup,
				"identity": identity,
			})
		},
	}, {
		name: "process and cgroup gone",
		ev: func() enrich.Event {
			ev := connectEvent()
			ev.Process = nil
			ev.CgroupPath = ""
			ev.Identity = ""
			return ev
		},
		want: func(seq int) obj {
			return with(header(seq, "connect"), obj{
				"conn": "00000000001a2b3c", "proto": "tcp", "family": "ipv4", "netns": 4026531840.0,
				"src":     obj{"ip": "10.0.3.7", "port": 43210.0},
				"dst":     obj{"ip": "10.96.0.15", "port": 443.0},
				"outcome": "established",
				"process": obj{"pid": 4242.0, "tid": 4243.0, "comm": "billing", "uid": 1000.0, "gid": 1001.0},
				"cgroup":  obj{"id": 9731.0},
			})
		},
	}, {
		name: "nothing optional known",
		ev: func() enrich.Event {
			ev := connectEvent()
			ev.Outcome = collector.OutcomeUnknown
			ev.Cookie = 0
			ev.NetNS = 0
			ev.Comm = [16]byte{}
			ev.CgroupID = 0
			ev.CgroupPath = ""
			ev.Identity = ""
			ev.Process = &enrich.Process{}
			return ev
		},
		want: func(seq int) obj {
			return with(header(seq, "connect"), obj{
				"proto": "tcp", "family": "ipv4",
				"src":     obj{"ip": "10.0.3.7", "port": 43210.0},
				"dst":     obj{"ip": "10.96.0.15", "port": 443.0},
				"process": obj{"pid": 4242.0, "tid": 4243.0, "uid": 1000.0, "gid": 1001.0},
			})
		},
	}, {
		name: "timeout without errno, unnamed errno kept as number",
		ev: func() enrich.Event {
			ev := connectEvent()
			ev.Outcome = collector.OutcomeFailed
			ev.Errno = 4000
			ev.Src = netip.MustParseAddrPort("[fe80::1%eth\"0]:1")
			ev.Dst = netip.MustParseAddrPort("[::ffff:10.0.0.1]:80")
			return ev
		},
		want: func(seq int) obj {
			return with(header(seq, "connect"), obj{
				"conn": "00000000001a2b3c", "proto": "tcp", "family": "ipv6", "netns": 4026531840.0,
				"src":      obj{"ip": "fe80::1%eth\"0", "port": 1.0},
				"dst":      obj{"ip": "::ffff:10.0.0.1", "port": 80.0},
				"outcome":  "failed",
				"error":    "4000",
				"process":  fullProcess,
				"cgroup":   cgroup,
				"identity": identity,
			})
		},
	}, {
		name: "loss",
		ev: func() enrich.Event {
			return enrich.Event{Event: collector.Event{
				Kind:       collector.KindLoss,
				Time:       eventTime,
				Lost:       17,
				LossStage:  collector.StageKernel,
				LossReason: collector.ReasonRingBufferFull,
			}}
		},
		want: func(seq int) obj {
			return with(header(seq, "loss"), obj{
				"loss": obj{"stage": "kernel", "reason": "ring_buffer_full", "count": 17.0},
			})
		},
	}}

	enc := NewEncoder("worker-1", "inst")
	if enc.Seq() != 0 {
		t.Fatalf("Seq before any event = %d, want 0", enc.Seq())
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tt.ev()
			prefix := []byte("previous line\n")
			out := enc.Append(bytes.Clone(prefix), &scope.Event{Event: ev})
			if !bytes.HasPrefix(out, prefix) {
				t.Fatalf("Append overwrote dst: %q", out)
			}
			seq := i + 1
			if enc.Seq() != uint64(seq) {
				t.Errorf("Seq = %d, want %d", enc.Seq(), seq)
			}
			got := decodeLine(t, out[len(prefix):])
			if want := tt.want(seq); !reflect.DeepEqual(got, want) {
				t.Errorf("got  %v\nwant %v\nline %s", got, want, out[len(prefix):])
			}
		})
	}
}

func TestEncoderKeyOrder(t *testing.T) {
	ev := connectEvent()
	ev.Errno = unix.ECONNRESET
	out := NewEncoder("n", "i").Append(nil, &scope.Event{Event: ev})
	keys := []string{`"schema"`, `"id"`, `"seq"`, `"time"`, `"node"`, `"kind"`, `"conn"`, `"proto"`,
		`"family"`, `"netns"`, `"src"`, `"dst"`, `"outcome"`, `"error"`, `"process"`, `"pid"`, `"tid"`,
		`"comm"`, `"exe"`, `"cmdline"`, `"uid"`, `"gid"`, `"ppid"`, `"cgroup"`, `"id"`, `"path"`, `"identity"`}
	rest := out
	for _, k := range keys {
		i := bytes.Index(rest, []byte(k+":"))
		if i < 0 {
			t.Fatalf("key %s missing or out of order in %s", k, out)
		}
		rest = rest[i+len(k):]
	}
}

func TestEncoderNoNode(t *testing.T) {
	ev := connectEvent()
	m := decodeLine(t, NewEncoder("", "x").Append(nil, &scope.Event{Event: ev}))
	if _, ok := m["node"]; ok {
		t.Errorf("node written although unknown: %v", m["node"])
	}
}

func TestEncoderTime(t *testing.T) {
	for _, ns := range []int64{0, 1, eventTime, -1, 1 << 62} {
		ev := connectEvent()
		ev.Time = ns
		m := decodeLine(t, NewEncoder("", "x").Append(nil, &scope.Event{Event: ev}))
		got, err := time.Parse(time.RFC3339Nano, m["time"].(string))
		if err != nil || got.UnixNano() != ns {
			t.Errorf("time %d written as %q (%v)", ns, m["time"], err)
		}
	}
}

// viaEncodingJSON is what a string becomes after encoding/json writes it
// and reads it back.
func viaEncodingJSON(t testing.TB, s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back string
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	return back
}

// encodingJSONString is how encoding/json writes s when HTML escaping is off.
func encodingJSONString(t testing.TB, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var awkwardStrings = []string{
	"",
	"plain",
	`quote " and backslash \ and \"both\"`,
	"newline\nreturn\rtab\tbackspace\bformfeed\f",
	"nul\x00 bell\x07 esc\x1b unit\x1f del\x7f",
	"invalid \xff\xfe utf-8 \xc3 truncated \xe2\x82",
	"separators \u2028 and \u2029",
	"emoji 🦫 and 日本語 and é",
	"<script>&amp;</script>",
	"\xed\xa0\x80 surrogate half",
	"\xf4\x90\x80\x80 beyond U+10FFFF",
	"ends in backslash \\",
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range awkwardStrings {
		got := appendString(nil, s)
		if want := encodingJSONString(t, s); !bytes.Equal(got, want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

// TestAppendStringWordBoundaries puts each kind of byte that needs escaping
// (or is not ASCII) at every position of strings long enough to be read a
// word at a time, so that one missed by the word test shows.
func TestAppendStringWordBoundaries(t *testing.T) {
	specials := []string{"\x00", "\x1f", "\x7f", "\"", "\\", "\n", "\xff", "é", "\u2028", "🦫", " ", "~", "!", "#", "[", "]"}
	for _, c := range specials {
		for n := 1; n <= 26; n++ {
			for at := 0; at+len(c) <= n; at++ {
				s := strings.Repeat("a", at) + c + strings.Repeat("b", n-at-len(c))
				got := appendString(nil, s)
				if want := encodingJSONString(t, s); !bytes.Equal(got, want) {
					t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
				}
			}
		}
	}
}

func TestPlain8(t *testing.T) {
	for b := range 256 {
		for at := range 8 {
			w := []byte("abcdefgh")
			w[at] = byte(b)
			x := uint64(0)
			for i := range 8 {
				x |= uint64(w[i]) << (8 * i)
			}
			if got, want := plain8(x), jsonPlain[b]; got != want {
				t.Errorf("plain8(%q) = %v, want %v", w, got, want)
			}
		}
	}
}

func TestEncoderEscaping(t *testing.T) {
	for _, s := range awkwardStrings {
		ev := connectEvent()
		ev.Comm = comm(s)
		ev.Process = &enrich.Process{Exe: s, Cmdline: []string{s, "--" + s}}
		ev.CgroupPath = s
		ev.Identity = s
		ev.Src = netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone(s), 1)
		line := NewEncoder(s, s).Append(nil, &scope.Event{Event: ev})
		m := decodeLine(t, line)

		want := func(s string) string { return viaEncodingJSON(t, s) }
		proc := m["process"].(obj)
		checks := []struct {
			field string
			got   any
			want  string
		}{
			{"node", m["node"], want(s)},
			{"id", m["id"], want(s + "-1")},
			{"comm", proc["comm"], want(ev.CommString())},
			{"exe", proc["exe"], want(s)},
			{"cmdline[0]", proc["cmdline"].([]any)[0], want(s)},
			{"cmdline[1]", proc["cmdline"].([]any)[1], want("--" + s)},
			{"cgroup.path", m["cgroup"].(obj)["path"], want(s)},
			{"identity", m["identity"], want(s)},
			{"src.ip", m["src"].(obj)["ip"], want(ev.Src.Addr().String())},
		}
		for _, c := range checks {
			if s == "" && c.got == nil {
				continue // empty strings are left out
			}
			if c.got != c.want {
				t.Errorf("%q: %s = %q, want %q", s, c.field, c.got, c.want)
			}
		}
	}
}

func TestEncoderAllocs(t *testing.T) {
	ev := connectEvent()
	ev.Errno = unix.ECONNRESET
	ev.Process.Cmdline = []string{"/app/billing", "--prod", "weird \"arg\"\n\xff\u2028"}
	ev.Src = netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("eth0"), 1)
	enc := NewEncoder("worker-1", "inst")
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(1000, func() {
		buf = enc.Append(buf[:0], &scope.Event{Event: ev})
	})
	if allocs != 0 {
		t.Errorf("Append allocates %v times per event, want 0", allocs)
	}
	// Verdicts under policy versions that change as policies reload.
	judged := []scope.Event{
		{Event: ev, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing", PolicyVersion: "3f2a9c01b7de"}},
		{Event: ev, Scope: scope.Judgement{Verdict: scope.Allowed, Scopes: "billing", Rule: "billing/egress[0]", Via: scope.ViaCIDR, PolicyVersion: "0c5e11a2f4d8"}},
	}
	i := 0
	allocs = testing.AllocsPerRun(1000, func() {
		buf = enc.Append(buf[:0], &judged[i%2])
		i++
	})
	if allocs != 0 {
		t.Errorf("Append of a verdict allocates %v times per event, want 0", allocs)
	}
	// A staged outcome beside the verdict.
	staged := scope.Event{Event: ev, Scope: scope.Judgement{Verdict: scope.Allowed, Scopes: "billing", Rule: "billing/egress[0]", Via: scope.ViaCIDR,
		Staged: scope.Staged{Verdict: scope.WouldViolate, Scopes: "billing-next"}}}
	if allocs := testing.AllocsPerRun(1000, func() { buf = enc.Append(buf[:0], &staged) }); allocs != 0 {
		t.Errorf("Append with a staged outcome allocates %v times per event, want 0", allocs)
	}
	// A callee and findings, as a pod's shell calling in clear.
	found := scope.Event{Event: ev, Findings: 1<<scope.HumanUse | 1<<scope.CleartextProtocol}
	found.TTY, found.LoginUID = true, 1000
	found.Callee = &enrich.Callee{Namespace: "payments", Service: "ledger", Pod: "ledger-1", ServiceAccount: "ledger", Identity: "spiffe://cluster.local/ns/payments/sa/ledger"}
	if allocs := testing.AllocsPerRun(1000, func() { buf = enc.Append(buf[:0], &found) }); allocs != 0 {
		t.Errorf("Append with a callee and findings allocates %v times per event, want 0", allocs)
	}
	loss := enrich.Event{Event: collector.Event{Kind: collector.KindLoss, Lost: 1,
		LossStage: collector.StageQueue, LossReason: collector.ReasonQueueFull}}
	if allocs := testing.AllocsPerRun(1000, func() { buf = enc.Append(buf[:0], &scope.Event{Event: loss}) }); allocs != 0 {
		t.Errorf("Append of a loss event allocates %v times, want 0", allocs)
	}
}

func BenchmarkEncode(b *testing.B) {
	ev := connectEvent()
	enc := NewEncoder("worker-1", "3f2a9c")
	buf := enc.Append(make([]byte, 0, 4096), &scope.Event{Event: ev})
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.Append(buf[:0], &scope.Event{Event: ev})
	}
}

func TestEncoderTimeFixedWidth(t *testing.T) {
	enc := NewEncoder("n", "i")
	ev := &enrich.Event{}
	ev.Kind = collector.KindLoss
	ev.Time = time.Date(2026, 11, 27, 4, 32, 4, 100_000_000, time.UTC).UnixNano()
	line := string(enc.Append(nil, &scope.Event{Event: *ev}))
	if !strings.Contains(line, `"time":"2026-11-27T04:32:04.100000000Z"`) {
		t.Errorf("time not in fixed-width RFC 3339: %s", line)
	}
}

func TestEncoderWorkload(t *testing.T) {
	base := enrich.Event{}
	base.Kind, base.Outcome = collector.KindConnect, collector.OutcomeEstablished
	base.Dst = netip.MustParseAddrPort("10.96.0.15:443")
	const id = "3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"

	full := base
	full.Cgroup = enrich.CgroupInfo{ContainerID: id, Runtime: "containerd", PodUID: "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"}
	full.Pod = &enrich.Pod{UID: "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c", Namespace: "payments", Name: "billing-7d9f-x2",
		ServiceAccount: "billing", Workload: "Deployment/billing"}
	uidOnly := base
	uidOnly.Cgroup = enrich.CgroupInfo{ContainerID: id, PodUID: "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"}
	host := base
	host.Cgroup = enrich.CgroupInfo{Unit: "billing.service"}

	for _, tc := range []struct {
		name      string
		ev        enrich.Event
		container any
		k8s       any
	}{
		{"pod known to the API", full,
			map[string]any{"id": id, "runtime": "containerd"},
			map[string]any{"namespace": "payments", "pod": "billing-7d9f-x2", "pod_uid": "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c",
				"service_account": "billing", "workload": "Deployment/billing"}},
		{"pod UID from the cgroup only, runtime unknown", uidOnly,
			map[string]any{"id": id},
			map[string]any{"pod_uid": "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"}},
		{"host service", host, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := NewEncoder("n", "i").Append(nil, &scope.Event{Event: tc.ev})
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			if !reflect.DeepEqual(m["container"], tc.container) || !reflect.DeepEqual(m["k8s"], tc.k8s) {
				t.Errorf("container %v k8s %v\nwant %v %v", m["container"], m["k8s"], tc.container, tc.k8s)
			}
		})
	}
}

// TestAppendTime: the cached second gives what time.Format gives, across
// second, day and year boundaries.
func TestAppendTime(t *testing.T) {
	e := NewEncoder("", "")
	base := time.Date(2026, 12, 31, 23, 59, 58, 999_999_999, time.UTC).UnixNano()
	for _, ts := range []int64{0, 1, 999_999_999, 1e9, base, base + 1, base + 1e9, base + 1e9 + 1, base + 2e9, base - 5e9, -1} {
		got := string(e.appendTime(nil, ts))
		if want := time.Unix(0, ts).UTC().Format(timeLayout); got != want {
			t.Errorf("%d: %s, want %s", ts, got, want)
		}
	}
}

// TestEncoderCalleeAndFindings: the callee's names go in dst, findings in
// a list with their catalogue ids and reasons, and a caller the kernel did
// not name tells no session.
func TestEncoderCalleeAndFindings(t *testing.T) {
	enc := NewEncoder("worker-1", "i")
	ev := scope.Event{Event: connectEvent()}
	ev.DstName, ev.NameSource = "ledger.payments.svc.cluster.local", enrich.NameSourceDNS
	ev.Callee = &enrich.Callee{Namespace: "payments", Service: "ledger", Pod: "ledger-7d9f-x2", ServiceAccount: "ledger",
		Workload: "deployment/ledger", Identity: "spiffe://cluster.local/ns/payments/sa/ledger"}
	ev.TTY = true
	ev.Cgroup.Unit = "billing.service"
	ev.Findings = 1<<scope.HumanUse | 1<<scope.Plaintext
	got := decodeLine(t, enc.Append(nil, &ev))
	wantDst := obj{"ip": "10.96.0.15", "port": 443.0, "name": "ledger.payments.svc.cluster.local", "name_source": "dns",
		"k8s":      obj{"namespace": "payments", "service": "ledger", "pod": "ledger-7d9f-x2", "service_account": "ledger", "workload": "deployment/ledger"},
		"identity": "spiffe://cluster.local/ns/payments/sa/ledger"}
	if !reflect.DeepEqual(got["dst"], wantDst) {
		t.Errorf("dst %v, want %v", got["dst"], wantDst)
	}
	wantFindings := []any{
		obj{"id": "human_use", "owasp": "NHI10", "reason": "a person's session (a controlling terminal) called as spiffe://cluster.local/ns/payments/sa/billing"},
		obj{"id": "plaintext", "owasp": "NHI4", "reason": "the first data sent to port 443, where TLS is expected, was no TLS handshake"},
	}
	if !reflect.DeepEqual(got["findings"], wantFindings) {
		t.Errorf("findings %v, want %v", got["findings"], wantFindings)
	}
	if got["process"].(obj)["tty"] != true {
		t.Errorf("process %v, want tty", got["process"])
	}

	// A cluster IP names only its Service; no finding without an OWASP
	// risk carries one.
	ev = scope.Event{Event: connectEvent()}
	ev.Callee = &enrich.Callee{Namespace: "payments", Service: "ledger"}
	ev.Findings = 1 << scope.NoSNI
	ev.PID, ev.TTY, ev.LoginUID = 0, true, 1000
	got = decodeLine(t, enc.Append(nil, &ev))
	if want := (obj{"ip": "10.96.0.15", "port": 443.0, "k8s": obj{"namespace": "payments", "service": "ledger"}}); !reflect.DeepEqual(got["dst"], want) {
		t.Errorf("dst %v, want %v", got["dst"], want)
	}
	if want := []any{obj{"id": "no_sni", "reason": "the ClientHello names no server"}}; !reflect.DeepEqual(got["findings"], want) {
		t.Errorf("findings %v, want %v", got["findings"], want)
	}
	if p := got["process"].(obj); p["tty"] != nil || p["login_uid"] != nil {
		t.Errorf("process %v of pid 0 tells a session", p)
	}
	if _, ok := got["scope"]; ok {
		t.Error("a scope member without a verdict")
	}
}

// TestEncoderStaged: the staged scopes' outcome goes beside the verdict,
// in scope.staged, with the keys of scope itself; there is none without
// one, and a verdict of staged scopes alone is the verdict.
func TestEncoderStaged(t *testing.T) {
	enc := NewEncoder("", "i")
	for _, tc := range []struct {
		name string
		j    scope.Judgement
		want obj
	}{{
		name: "enforced allowed, staged would violate",
		j: scope.Judgement{Verdict: scope.Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: scope.ViaCIDR, PolicyVersion: "3f2a9c01b7de",
			Staged: scope.Staged{Verdict: scope.WouldViolate, Scopes: "billing-next"}},
		want: obj{"verdict": "allowed", "policy": "billing-egress", "rule": "billing-egress/egress[0]", "policy_version": "3f2a9c01b7de",
			"reason": "allowed by billing-egress/egress[0] for 10.96.0.15:443",
			"staged": obj{"verdict": "would_violate", "policy": "billing-next", "reason": "no egress rule of billing-next allows 10.96.0.15:443"}},
	}, {
		name: "enforced violation, staged allowed",
		j: scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress",
			Staged: scope.Staged{Verdict: scope.Allowed, Scopes: "billing-next,\"odd\"", Rule: "billing-next/egress[1]", Via: scope.ViaCIDR}},
		want: obj{"verdict": "violation", "policy": "billing-egress", "reason": "no egress rule of billing-egress allows 10.96.0.15:443",
			"staged": obj{"verdict": "allowed", "policy": "billing-next,\"odd\"", "rule": "billing-next/egress[1]", "reason": "allowed by billing-next/egress[1] for 10.96.0.15:443"}},
	}, {
		name: "staged alone",
		j:    scope.Judgement{Verdict: scope.WouldViolate, Scopes: "billing-next", Mode: scope.Audit},
		want: obj{"verdict": "would_violate", "policy": "billing-next", "reason": "no egress rule of billing-next allows 10.96.0.15:443"},
	}, {
		name: "staged pending",
		j:    scope.Judgement{Verdict: scope.Allowed, Scopes: "a", Rule: "a/egress[0]", Via: scope.ViaCIDR, Staged: scope.Staged{Verdict: scope.Pending, Scopes: "b"}},
		want: obj{"verdict": "allowed", "policy": "a", "rule": "a/egress[0]", "reason": "allowed by a/egress[0] for 10.96.0.15:443",
			"staged": obj{"verdict": "pending", "policy": "b", "reason": "allowed only if the TLS server name matches an sni rule"}},
	}} {
		line := decodeLine(t, enc.Append(nil, &scope.Event{Event: connectEvent(), Scope: tc.j}))
		if got := line["scope"]; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: scope\n %v\nwant\n %v", tc.name, got, tc.want)
		}
	}
}
