package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/scope"
)

// syncBuffer is a bytes.Buffer safe to read while tail writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const billing = "spiffe://cluster.local/ns/payments/sa/billing"

func tailConnect(instance string, seq int, verdict string) string {
	return fmt.Sprintf(`{"schema":"callscope/v1","id":"%s-%d","seq":%d,"time":"2026-11-27T04:32:04.%09dZ","node":"worker-1","kind":"connect","proto":"tcp","dst":{"ip":"10.96.0.15","port":443,"name":"api.stripe.com","name_source":"dns"},"outcome":"established","process":{"pid":4242,"comm":"billing"},"identity":%q,"scope":{"verdict":%q,"policy":"billing-egress","reason":"no egress rule allows 10.96.0.15:443"}}`,
		instance, seq, seq, seq, billing, verdict)
}

// produce writes values to topic with kafka-go, keyed as the agent keys.
func produce(t *testing.T, brokers []string, topic string, values ...string) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	var msgs []kafka.Message
	for _, v := range values {
		msgs = append(msgs, kafka.Message{Key: []byte(billing), Value: []byte(v)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// startTail runs tail with args until the test ends.
func startTail(t *testing.T, args ...string) (stdout, stderr *syncBuffer) {
	t.Helper()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runTail(ctx, args, func(string) string { return "" }, stdout, stderr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tail: %v", err)
		}
	})
	return stdout, stderr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTail(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	produce(t, brokers, "callscope.events",
		tailConnect("inst", 1, "allowed"),
		strings.Replace(tailConnect("inst", 2, "violation"), `"scope":{`, `"scope":{"policy_version":"3f2a9c01b7de",`, 1),
		tailConnect("inst", 3, "unscoped"),
		tailConnect("inst", 3, "unscoped"), // at least once: a duplicate
		// 4 and 5 never came; 6 says why
		`{"schema":"callscope/v1","id":"inst-6","seq":6,"time":"2026-11-27T04:32:05Z","kind":"loss","loss":{"stage":"spool","reason":"spool_full","count":2}}`,
		`{"schema":"callscope/v1","id":"inst-7","seq":7,"time":"2026-11-27T04:32:05Z","kind":"connect","dst":{"ip":"2001:db8::15","port":8443},"outcome":"refused","identity":"unit:sshd.service"}`,
		tailConnect("other", 9, "allowed"),
		tailConnect("other", 10, "pending"),
	)

	stdout, stderr := startTail(t, "--kafka-brokers", strings.Join(brokers, ","), "--from-beginning")
	waitFor(t, "8 lines", func() bool { return strings.Count(stdout.String(), "\n") == 8 })
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	want := []string{
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established allowed",
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established violation (billing-egress: no egress rule allows 10.96.0.15:443) [policies 3f2a9c01b7de]",
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established unscoped",
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established unscoped",
		"2026-11-27T04:32:05.000Z loss: 2 events lost at spool (spool_full) instance inst",
		"2026-11-27T04:32:05.000Z unit:sshd.service → [2001:db8::15]:8443 connect refused",
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established allowed",
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established pending",
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d:\n got %q\nwant %q", i+1, lines[i], want[i])
		}
	}
	if strings.Contains(stdout.String(), "\x1b[") {
		t.Errorf("colour written to something that is not a terminal")
	}
	waitFor(t, "the gap", func() bool { return strings.Contains(stderr.String(), "gap:") })
	if got, want := stderr.String(), "gap: instance inst seq 4..5 missing (2 events)\n"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}

	// Events that come while tail runs.
	produce(t, brokers, "callscope.events", tailConnect("other", 11, "allowed"), tailConnect("other", 14, "allowed"))
	waitFor(t, "the second gap", func() bool { return strings.Count(stderr.String(), "gap:") == 2 })
	if !strings.HasSuffix(stderr.String(), "gap: instance other seq 12..13 missing (2 events)\n") {
		t.Errorf("stderr %q", stderr.String())
	}
}

func TestTailJSONViolations(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	v := []string{tailConnect("inst", 2, "violation"), tailConnect("inst", 5, "violation")}
	produce(t, brokers, "callscope.violations", v...)
	produce(t, brokers, "callscope.events", tailConnect("inst", 1, "allowed"))
	stdout, stderr := startTail(t, "--kafka-brokers", strings.Join(brokers, ","), "--violations", "--json", "--from-beginning")
	waitFor(t, "2 lines", func() bool { return strings.Count(stdout.String(), "\n") == 2 })
	if got := stdout.String(); got != v[0]+"\n"+v[1]+"\n" {
		t.Errorf("stdout %q, want the values as they are", got)
	}
	// The violations topic skips seqs by design.
	if strings.Contains(stderr.String(), "gap") {
		t.Errorf("gap reported on the violations topic: %q", stderr.String())
	}
}

// TestTailFindings: findings are shown, and --finding keeps the events
// with one of them and every loss event, and still reports gaps.
func TestTailFindings(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	withFindings := func(ev, findings string) string {
		return strings.TrimSuffix(ev, "}") + `,"findings":` + findings + "}"
	}
	human := withFindings(tailConnect("inst", 1, "allowed"), `[{"id":"human_use","owasp":"NHI10","reason":"a person's session (a controlling terminal) called as `+billing+`"}]`)
	nosni := withFindings(tailConnect("inst", 3, "allowed"), `[{"id":"no_sni","reason":"the ClientHello names no server"}]`)
	produce(t, brokers, "callscope.events",
		human,
		tailConnect("inst", 2, "allowed"),
		nosni,
		`{"schema":"callscope/v1","id":"inst-5","seq":5,"time":"2026-11-27T04:32:05Z","kind":"loss","loss":{"stage":"queue","reason":"queue_full","count":1}}`,
	)
	stdout, stderr := startTail(t, "--kafka-brokers", strings.Join(brokers, ","), "--from-beginning", "--finding", "human_use,legacy_tls")
	waitFor(t, "2 lines and the gap", func() bool {
		return strings.Count(stdout.String(), "\n") == 2 && strings.Contains(stderr.String(), "gap:")
	})
	want := "2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established allowed finding human_use [NHI10]: a person's session (a controlling terminal) called as " + billing + "\n" +
		"2026-11-27T04:32:05.000Z loss: 1 events lost at queue (queue_full) instance inst\n"
	if got := stdout.String(); got != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", got, want)
	}
	// Filtered out is not missing: only seq 4 is.
	if got := stderr.String(); got != "gap: instance inst seq 4..4 missing (1 events)\n" {
		t.Errorf("stderr %q", got)
	}

	if _, err := parseTailConfig([]string{"--kafka-brokers", "b:9092", "--finding", "humanuse"}, func(string) string { return "" }, &bytes.Buffer{}); err == nil ||
		!strings.Contains(err.Error(), `--finding "humanuse": want one of human_use, plaintext`) {
		t.Errorf("an unknown finding: %v", err)
	}
}

func TestTailErrors(t *testing.T) {
	if _, err := parseTailConfig(nil, func(string) string { return "" }, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--kafka-brokers") {
		t.Errorf("no brokers: %v", err)
	}
	// Blanks between commas name no broker.
	if _, err := parseTailConfig([]string{"--kafka-brokers", " , "}, func(string) string { return "" }, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--kafka-brokers") {
		t.Errorf("blank brokers: %v", err)
	}
	cfg, err := parseTailConfig([]string{"--json"}, func(k string) string {
		return map[string]string{"CALLSCOPE_KAFKA_BROKERS": "k:9092", "CALLSCOPE_KAFKA_TOPIC": "t"}[k]
	}, &bytes.Buffer{})
	if err != nil || !slices.Equal(cfg.kafka.brokers, []string{"k:9092"}) || cfg.kafka.topic != "t" || !cfg.json {
		t.Errorf("from the environment: %+v, %v", cfg, err)
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = runTail(context.Background(), []string{"--kafka-brokers", c.ListenAddrs()[0], "--kafka-topic", "nope"},
		func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing topic: %v", err)
	}

	sc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events"),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "tail", "right"))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	pw := filepath.Join(t.TempDir(), "password")
	os.WriteFile(pw, []byte("wrong\n"), 0o600)
	err = runTail(context.Background(), []string{"--kafka-brokers", sc.ListenAddrs()[0], "--kafka-sasl-mechanism", "scram-sha-512",
		"--kafka-sasl-username", "tail", "--kafka-sasl-password-file", pw}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("wrong password: %v", err)
	}
	// And with the right one, it reads.
	os.WriteFile(pw, []byte("right\n"), 0o600)
	stdout, _ := startTail(t, "--kafka-brokers", sc.ListenAddrs()[0], "--kafka-sasl-mechanism", "scram-sha-512",
		"--kafka-sasl-username", "tail", "--kafka-sasl-password-file", pw, "--from-beginning")
	w := &kafka.Writer{Addr: kafka.TCP(sc.ListenAddrs()...), Topic: "callscope.events", BatchTimeout: time.Millisecond,
		Transport: &kafka.Transport{SASL: scramForTest(t)}}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Value: []byte(tailConnect("i", 1, "allowed"))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a line over SASL", func() bool { return strings.Contains(stdout.String(), "api.stripe.com:443") })
}

func scramForTest(t *testing.T) sasl.Mechanism {
	m, err := exporter.KafkaSASL("scram-sha-512", "tail", "right")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSeqTrackerReordered(t *testing.T) {
	var gaps []gap
	tr := newSeqTracker(time.Second, func(g gap) { gaps = append(gaps, g) })
	t0 := time.Unix(0, 0)
	for _, s := range []uint64{10, 12, 11, 15, 13, 14, 14, 9} { // across partitions, a duplicate, an old one
		tr.see("a", s, t0)
	}
	tr.flush(t0.Add(2 * time.Second))
	if len(gaps) != 0 {
		t.Errorf("reordered seqs reported as gaps: %+v", gaps)
	}
	tr.see("a", 20, t0.Add(3*time.Second))
	tr.flush(t0.Add(3500 * time.Millisecond))
	if len(gaps) != 0 {
		t.Fatalf("gap reported before its grace: %+v", gaps)
	}
	tr.see("a", 18, t0.Add(3600*time.Millisecond))
	tr.flush(t0.Add(5 * time.Second))
	want := []gap{{"a", 16, 17}, {"a", 19, 19}}
	if fmt.Sprint(gaps) != fmt.Sprint(want) {
		t.Errorf("gaps %+v, want %+v", gaps, want)
	}
}

// An agent run with --format ocsf writes records tail cannot read: tail
// says so and stops, rather than print lines made of the wrong fields;
// with --json it prints them as they are.
func TestTailOCSF(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	var ev scope.Event
	ev.Kind, ev.Outcome, ev.Time = collector.KindConnect, collector.OutcomeEstablished, time.Now().UnixNano()
	ev.Dst = netip.MustParseAddrPort("10.96.0.15:443")
	record := strings.TrimSuffix(string(exporter.NewOCSFEncoder("worker-1", "inst", "v1").Append(nil, &ev)), "\n")
	produce(t, brokers, "callscope.events", tailConnect("inst", 1, "allowed"), record)

	var stdout, stderr syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = runTail(ctx, []string{"--kafka-brokers", strings.Join(brokers, ","), "--from-beginning"}, func(string) string { return "" }, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "partition 0 offset 1: an OCSF record (the agent runs with --format ocsf): tail reads the callscope format only") {
		t.Errorf("tail returned %v, want it to say the record is OCSF", err)
	}
	if strings.Count(stdout.String(), "\n") != 1 {
		t.Errorf("stdout %q, want the one callscope event", stdout.String())
	}

	out, _ := startTail(t, "--kafka-brokers", strings.Join(brokers, ","), "--from-beginning", "--json")
	waitFor(t, "2 lines", func() bool { return strings.Count(out.String(), "\n") == 2 })
	if !strings.HasSuffix(out.String(), record+"\n") {
		t.Errorf("--json stdout %q, want the OCSF record as it is", out.String())
	}
}

// tail shows a staged scope's would_violate as it shows a violation, and
// the staged outcome beside an enforced verdict.
func TestTailStaged(t *testing.T) {
	var out bytes.Buffer
	p := &tailPrinter{out: &out, errs: io.Discard}
	staged := strings.Replace(tailConnect("inst", 1, "allowed"), `"reason":"no egress rule allows 10.96.0.15:443"`,
		`"staged":{"verdict":"would_violate","policy":"billing-next","reason":"no egress rule of billing-next allows 10.96.0.15:443"}`, 1)
	for _, line := range []string{
		strings.Replace(tailConnect("inst", 2, "would_violate"), "billing-egress", "billing-next", 1),
		staged,
	} {
		var ev tailEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		out.Write(p.format(nil, &ev))
	}
	want := "2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established would_violate (billing-next: no egress rule allows 10.96.0.15:443)\n" +
		"2026-11-27T04:32:04.000Z " + billing + " → api.stripe.com:443 connect established allowed staged would_violate (billing-next: no egress rule of billing-next allows 10.96.0.15:443)\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
