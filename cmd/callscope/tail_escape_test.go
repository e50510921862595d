package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/scope"
)

// evil is what a workload can put in a name it chooses: a clear screen, a
// window title, a C1 CSI, a right-to-left override, DEL, a byte that is
// not UTF-8, and a line feed to forge a line of output.
const evil = "\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff\nforged"

// evilShown is evil as tail shows it, from an event of the agent: its
// encoder wrote the byte that is not UTF-8 as U+FFFD, as encoding/json does.
const evilShown = `\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f` + "\ufffd" + `\nforged`

// rawControl returns the first thing in b that would act on a terminal or
// reorder its line: a C0 control other than the line feed, DEL, a C1
// control or a format character in UTF-8, or a byte that is not UTF-8.
func rawControl(b []byte) (string, bool) {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return strconv.Quote(string(b[i : i+1])), true
		case r < 0x20 && r != '\n', r == 0x7f, r >= 0x80 && !strconv.IsPrint(r):
			return strconv.QuoteRune(r), true
		}
		i += size
	}
	return "", false
}

// hostileRecords are events the agent's encoder writes for a workload that
// chose every name it could, and records that are not events at all.
func hostileRecords(t *testing.T) (events []string, notEvents []string) {
	t.Helper()
	at := time.Date(2026, 11, 27, 4, 32, 4, 123456789, time.UTC).UnixNano()
	enc := exporter.NewEncoder("worker-1"+evil, "inst"+evil)
	add := func(ev scope.Event) {
		line := enc.Append(nil, &ev)
		events = append(events, string(bytes.TrimSuffix(line, []byte("\n"))))
	}
	call := enrich.Event{
		Event: collector.Event{
			Kind: collector.KindConnect, Outcome: collector.OutcomeEstablished, Time: at, Cookie: 7,
			Src: netip.MustParseAddrPort("10.0.3.7:43210"), Dst: netip.MustParseAddrPort("10.96.0.15:443"),
			PID: 4242, TID: 4242, CgroupID: 9731,
		},
		Process:    &enrich.Process{Exe: "/app/" + evil, Cmdline: []string{"/app/billing", "--name=" + evil}, PPID: 1},
		CgroupPath: "/kubepods.slice/" + evil + ".scope",
		Cgroup:     enrich.CgroupInfo{ContainerID: "c0ffee" + evil, Runtime: "containerd", PodUID: "uid" + evil},
		Pod:        &enrich.Pod{Namespace: "ns" + evil, Name: "billing" + evil, ServiceAccount: "sa" + evil, Workload: "Deployment/" + evil},
		Identity:   "spiffe://cluster.local/ns/payments/sa/" + evil,
		DstName:    "api." + evil + ".com",
		NameSource: enrich.NameSourceDNS,
	}
	copy(call.Comm[:], "\x1b[2J\u009b\n")
	// 1: a violation, with the policy and the name in its reason.
	add(scope.Event{Event: call, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing" + evil,
		Names: scope.Names{DNS: call.DstName}}})
	// 2: a ClientHello naming a server, with no other name known.
	hello := call
	hello.Kind, hello.DstName, hello.NameSource = collector.KindTLS, "", ""
	hello.Hello = &tlshello.ClientHello{SNI: "sni." + evil, ALPN: []string{"h2" + evil}, JA4: "t13d" + evil}
	add(scope.Event{Event: hello, Scope: scope.Judgement{Verdict: scope.Allowed, Rule: "billing/egress[0]" + evil, Via: scope.ViaSNI,
		Names: scope.Names{SNI: hello.Hello.SNI}}})
	// 3 is never sent: a gap of this instance.
	enc.Append(nil, &scope.Event{Event: call})
	// 4: a caller of unknown identity, named by its comm.
	anon := call
	anon.Identity, anon.Pod, anon.DstName = "", nil, ""
	add(scope.Event{Event: anon})
	// 5: a loss.
	add(scope.Event{Event: enrich.Event{Event: collector.Event{Kind: collector.KindLoss, Time: at, Lost: 3,
		LossStage: "spool" + evil, LossReason: "full" + evil}}})
	// 6: JSON that encoding/json would write too, with what it leaves
	// raw (C1, format characters, DEL), a byte that is not UTF-8 and a
	// line feed between members.
	events = append(events, "{\n\"id\":\"raw-1\",\"seq\":1,\"kind\":\"connect\",\"time\":\"2026-11-27T04:32:05Z\","+
		"\"dst\":{\"ip\":\"10.0.0.1\u009b\u202e\",\"port\":80},\"outcome\":\"refused\x7f\",\"error\":\"ECONNREFUSED\u2066\xff\","+
		"\"identity\":\"unit:\u202exe.sshd\u2069.service\"}")

	notEvents = []string{
		// Raw controls in a string: not JSON.
		"{\"id\":\"x-1\",\"identity\":\"\x1b[2J\x1b]0;owned\a\"}",
		// Two records in one, a forged second line.
		"{\"id\":\"x-2\",\"kind\":\"connect\"}\n{\"id\":\"forged-1\",\"identity\":\"root\"}",
		// Long garbage.
		strings.Repeat("\x1b[5m\u009b\xff", 100),
	}
	return events, notEvents
}

// runTailUntil runs tail with args until cond holds of its output, then
// stops it and returns all it wrote.
func runTailUntil(t *testing.T, what string, cond func(stdout, stderr string) bool, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errs := &syncBuffer{}, &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runTail(ctx, args, func(string) string { return "" }, out, errs) }()
	waitFor(t, what, func() bool { return cond(out.String(), errs.String()) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail: %v", err)
	}
	return out.String(), errs.String()
}

func TestTailEscapesHostileEvents(t *testing.T) {
	events, notEvents := hostileRecords(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := strings.Join(c.ListenAddrs(), ",")
	produce(t, c.ListenAddrs(), "callscope.events", append(append([]string{}, events...), notEvents...)...)

	t.Run("text", func(t *testing.T) {
		stdout, stderr := runTailUntil(t, "every line", func(stdout, stderr string) bool {
			return strings.Count(stdout, "\n") >= len(events) && strings.Count(stderr, "not an event") == len(notEvents) &&
				strings.Contains(stderr, "gap:")
		}, "--kafka-brokers", brokers, "--from-beginning")
		for name, out := range map[string]string{"stdout": stdout, "stderr": stderr} {
			if c, ok := rawControl([]byte(out)); ok {
				t.Errorf("%s holds %s raw:\n%s", name, c, out)
			}
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != len(events) {
			t.Fatalf("%d lines for %d events:\n%s", len(lines), len(events), stdout)
		}
		want := []string{
			"2026-11-27T04:32:04.123Z spiffe://cluster.local/ns/payments/sa/" + evilShown + " → api." + evilShown + ".com:443 connect established" +
				" violation (billing" + evilShown + ": no egress rule of billing" + evilShown + " allows 10.96.0.15:443 (api." + evilShown + ".com))",
			"2026-11-27T04:32:04.123Z spiffe://cluster.local/ns/payments/sa/" + evilShown + " → sni." + evilShown + ":443 tls allowed",
			`2026-11-27T04:32:04.123Z pid 4242 (\x1b[2J\u009b\n) → 10.96.0.15:443 connect established`,
			"2026-11-27T04:32:04.123Z loss: 3 events lost at spool" + evilShown + " (full" + evilShown + ") instance inst" + evilShown,
			`2026-11-27T04:32:05.000Z unit:\u202exe.sshd\u2069.service → 10.0.0.1\u009b\u202e:80 connect refused\x7f`,
		}
		for i := range want {
			if lines[i] != want[i] {
				t.Errorf("line %d:\n got %s\nwant %s", i+1, lines[i], want[i])
			}
		}
		wantErr := []string{
			"gap: instance inst" + evilShown + " seq 3..3 missing (1 events)\n",
			`not an event, skipped: partition 0 offset 5: invalid character '\x1b' in string literal: {"id":"x-1","identity":"\x1b[2J\x1b]0;owned\a"}` + "\n",
			`not an event, skipped: partition 0 offset 6: invalid character '{' after top-level value: {"id":"x-2","kind":"connect"}\n{"id":"forged-1","identity":"root"}` + "\n",
			`not an event, skipped: partition 0 offset 7: not a JSON object: ` +
				strings.Repeat(`\x1b[5m\u009b\xff`, 28) + `\x1b[5m… (700 bytes)` + "\n",
			"tail: 3 records were not events and were skipped\n",
		}
		for _, w := range wantErr {
			if !strings.Contains(stderr, w) {
				t.Errorf("stderr lacks %q:\n%s", w, stderr)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		stdout, stderr := runTailUntil(t, "every line", func(stdout, stderr string) bool {
			return strings.Count(stdout, "\n") >= len(events) && strings.Count(stderr, "not an event") == len(notEvents)
		}, "--kafka-brokers", brokers, "--from-beginning", "--json")
		for name, out := range map[string]string{"stdout": stdout, "stderr": stderr} {
			if c, ok := rawControl([]byte(out)); ok {
				t.Errorf("%s holds %s raw:\n%s", name, c, out)
			}
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != len(events) {
			t.Fatalf("%d lines for %d events:\n%s", len(lines), len(events), stdout)
		}
		for i, line := range lines {
			// The record's members in their order, meaning what they did.
			var got, want any
			if err := json.Unmarshal([]byte(line), &got); err != nil {
				t.Fatalf("line %d: %v: %s", i+1, err, line)
			}
			json.Unmarshal([]byte(events[i]), &want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("line %d decodes to\n%v\nwant\n%v", i+1, got, want)
			}
			if i < 4 && !strings.HasPrefix(line, `{"schema":"callscope/v1","id":"inst\u001b[2J`) {
				t.Errorf("line %d: members reordered: %s", i+1, line)
			}
		}
		for _, visible := range []string{`\u001b[2J`, `\u009b31m`, `\u202eevil\u007f\ufffd\nforged`, `"exe":"/app/\u001b`,
			`"path":"/kubepods.slice/\u001b`, `"container":{"id":"c0ffee\u001b`, `"pod":"billing\u001b`, `"sni":"sni.\u001b`,
			`"node":"worker-1\u001b`, `"error":"ECONNREFUSED\u2066\ufffd"`, `"reason":"allowed by billing/egress[0]\u001b`} {
			if !strings.Contains(stdout, visible) {
				t.Errorf("stdout lacks %s", visible)
			}
		}
		for _, w := range []string{
			`offset 5: invalid character '\x1b' in string literal: {"id":"x-1"`,
			`offset 6: invalid character '{' after top-level value: {"id":"x-2","kind":"connect"}\n{"id":"forged-1"`,
			`offset 7: invalid character '\x1b' looking for beginning of value: \x1b[5m\u009b\xff`,
		} {
			if !strings.Contains(stderr, w) {
				t.Errorf("stderr lacks %q:\n%s", w, stderr)
			}
		}
	})
}
