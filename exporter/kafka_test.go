package exporter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/callscope/callscope/collector"
)

const (
	testTopic      = "callscope.events"
	testViolations = "callscope.violations"
)

var identities = []string{
	"spiffe://cluster.local/ns/payments/sa/billing",
	"spiffe://cluster.local/ns/payments/sa/ledger",
	"unit:sshd.service",
	"exe:/usr/bin/curl uid:1000",
	"spiffe://cluster.local/ns/kube-system/sa/coredns",
}

// testMsg is message seq of the test stream: every fourth a violation,
// every hundredth (from 50) a keyless loss event. The others are about
// 600 bytes and compress about as well as real events: ids that differ
// from event to event among keys and names that repeat.
func testMsg(seq int) Message {
	if seq%100 == 50 {
		return Message{Value: fmt.Appendf(nil, `{"seq":%d,"kind":"loss"}`, seq)}
	}
	id := identities[seq%len(identities)]
	sum := sha256.Sum256(strconv.AppendInt(nil, int64(seq), 10))
	return Message{
		Key: []byte(id),
		Value: fmt.Appendf(nil, `{"seq":%d,"kind":"connect","conn":"%x","dst":{"ip":"10.96.%d.%d","port":443,"name":"api.stripe.com"},`+
			`"outcome":"established","process":{"pid":%d,"comm":"billing","exe":"/app/billing","cmdline":["/app/billing","--prod"],"uid":1000},`+
			`"cgroup":{"path":"/kubepods.slice/kubepods-burstable.slice/cri-containerd-%x.scope"},"container":{"id":"%x","runtime":"containerd"},`+
			`"k8s":{"namespace":"payments","pod":"billing-7d9f-x2"},"identity":%q}`,
			seq, sum[:8], sum[8], sum[9], 1000+int(sum[10])<<4, sum, sum, id),
		Violation: seq%4 == 0,
	}
}

func testMsgs(from, to int) []Message {
	out := make([]Message, 0, to-from)
	for seq := from; seq < to; seq++ {
		out = append(out, testMsg(seq))
	}
	return out
}

// logBuffer collects a logger's output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type sinkEnv struct {
	cfg  KafkaConfig
	reg  *prometheus.Registry
	logs *logBuffer
}

func newSinkEnv(t testing.TB, brokers []string, dir string) *sinkEnv {
	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	var out io.Writer = logs
	if testing.Verbose() {
		out = io.MultiWriter(logs, os.Stderr)
	}
	return &sinkEnv{
		reg:  reg,
		logs: logs,
		cfg: KafkaConfig{
			Brokers:         brokers,
			Topic:           testTopic,
			ViolationsTopic: testViolations,
			SpoolDir:        dir,
			SpoolMaxBytes:   64 << 20,
			Logger:          slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Registerer:      reg,
		},
	}
}

func (e *sinkEnv) start(t testing.TB) *Kafka {
	t.Helper()
	k, err := NewKafka(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		k.Close(ctx)
	})
	return k
}

// metric returns the value of the metric name with the given label pairs.
func (e *sinkEnv) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if labelValue(m, labels[i]) != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, testTopic, testViolations)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// freePort returns a port nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consumed is a record read back with a consumer independent of the sink.
type consumed struct {
	key       string
	seq       int
	partition int32
}

// consume reads topic from its start until stop says it has enough, or
// fails after timeout.
func consume(t testing.TB, brokers []string, topic string, timeout time.Duration, stop func([]consumed) bool) []consumed {
	t.Helper()
	return consumeOver(t, nil, brokers, topic, timeout, stop)
}

// consumeOver is consume over TLS configured by tc; plaintext when nil.
func consumeOver(t testing.TB, tc *tls.Config, brokers []string, topic string, timeout time.Duration, stop func([]consumed) bool) []consumed {
	t.Helper()
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []consumed
	deadline := time.Now().Add(timeout)
	for !stop(out) {
		if time.Now().After(deadline) {
			t.Fatalf("read %d records of %s before timing out", len(out), topic)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			var v struct{ Seq int }
			if err := json.Unmarshal(r.Value, &v); err != nil {
				t.Fatalf("record %q: %v", r.Value, err)
			}
			out = append(out, consumed{key: string(r.Key), seq: v.Seq, partition: r.Partition})
		})
	}
	return out
}

func atLeast(n int) func([]consumed) bool {
	return func(c []consumed) bool { return len(c) >= n }
}

// checkStream checks that every seq in [from, to) was read, with its key,
// and that each identity's events came in order. It returns the number of
// duplicates.
func checkStream(t testing.TB, got []consumed, from, to int, violationsOnly bool) (dups int) {
	t.Helper()
	seen := map[int]bool{}
	last := map[string]int{}
	for _, c := range got {
		want := testMsg(c.seq)
		if c.key != string(want.Key) {
			t.Fatalf("seq %d has key %q, want %q", c.seq, c.key, want.Key)
		}
		if violationsOnly && !want.Violation {
			t.Fatalf("seq %d is not a violation but is on the violations topic", c.seq)
		}
		if seen[c.seq] {
			dups++
			continue
		}
		seen[c.seq] = true
		if c.key != "" {
			if prev, ok := last[c.key]; ok && c.seq < prev {
				t.Errorf("identity %s: seq %d after %d", c.key, c.seq, prev)
			}
			last[c.key] = c.seq
		}
	}
	var missing []int
	for seq := from; seq < to; seq++ {
		if violationsOnly && !testMsg(seq).Violation {
			continue
		}
		if !seen[seq] {
			missing = append(missing, seq)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d seqs missing, first %v", len(missing), missing[:min(len(missing), 20)])
	}
	return dups
}

func countViolations(from, to int) int {
	n := 0
	for seq := from; seq < to; seq++ {
		if testMsg(seq).Violation {
			n++
		}
	}
	return n
}

func TestKafkaDelivers(t *testing.T) {
	c := newCluster(t)
	brokers := c.ListenAddrs()
	env := newSinkEnv(t, brokers, t.TempDir())
	k := env.start(t)
	const n = 2000
	for seq := 0; seq < n; seq += 100 {
		if err := k.Write(testMsgs(seq, seq+100)); err != nil {
			t.Fatal(err)
		}
	}
	nv := countViolations(0, n)
	eventually(t, 20*time.Second, "delivery", func() bool {
		return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") == n &&
			env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "violations") == float64(nv)
	})
	events := consume(t, brokers, testTopic, 20*time.Second, atLeast(n))
	if len(events) != n {
		t.Errorf("read %d events, want %d", len(events), n)
	}
	if dups := checkStream(t, events, 0, n, false); dups != 0 {
		t.Errorf("%d duplicates with a broker that never failed", dups)
	}
	// Each identity keeps to one partition, as Kafka's producer would put it.
	for _, e := range events {
		if e.key == "" {
			continue
		}
		if want := int32(kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(e.key)}, 0, 1, 2)); e.partition != want {
			t.Errorf("identity %s in partition %d, want %d", e.key, e.partition, want)
		}
	}
	violations := consume(t, brokers, testViolations, 20*time.Second, atLeast(nv))
	if len(violations) != nv {
		t.Errorf("read %d violations, want %d", len(violations), nv)
	}
	checkStream(t, violations, 0, n, true)

	if env.metric(t, "callscope_spool_events") != 0 {
		t.Errorf("spool still holds %v events", env.metric(t, "callscope_spool_events"))
	}
	if d := takeDropped(k); d != 0 {
		t.Errorf("spool_full losses = %d", d)
	}
	if !strings.Contains(env.logs.String(), "connected to Kafka") {
		t.Errorf("no word of the connection in the log:\n%s", env.logs)
	}
}

// TestKafkaBrokerOutage: the broker goes away for a while and comes back
// on the same port while events keep coming: every event arrives, in
// order per identity, duplicates counted.
func TestKafkaBrokerOutage(t *testing.T) {
	outage := 20 * time.Second
	if testing.Short() {
		outage = 3 * time.Second
	}
	port := freePort(t)
	data := t.TempDir()
	c := newCluster(t, kfake.Ports(port), kfake.DataDir(data))
	brokers := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	env := newSinkEnv(t, brokers, t.TempDir())
	env.cfg.SpoolMaxBytes = 1 << 30 // nothing is dropped
	k := env.start(t)

	var written int
	var wmu sync.Mutex
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	stopWriter := sync.OnceFunc(func() {
		close(stop)
		<-writerDone
	})
	t.Cleanup(stopWriter)
	go func() {
		defer close(writerDone)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wmu.Lock()
			if err := k.Write(testMsgs(written, written+20)); err != nil {
				t.Error(err)
			}
			written += 20
			wmu.Unlock()
		}
	}()
	delivered := func() float64 { return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") }
	eventually(t, 10*time.Second, "first deliveries", func() bool { return delivered() >= 500 })

	c.Close()
	down := time.Now()
	eventually(t, 10*time.Second, "failures to be seen", func() bool {
		return env.metric(t, "callscope_kafka_delivery_failures_total", "reason", "unreachable")+
			env.metric(t, "callscope_kafka_delivery_failures_total", "reason", "connection") > 0
	})
	time.Sleep(time.Until(down.Add(outage)))
	if env.metric(t, "callscope_spool_events") < 1000 {
		t.Errorf("only %v events spooled during the outage", env.metric(t, "callscope_spool_events"))
	}
	if !strings.Contains(env.logs.String(), "cannot reach the Kafka brokers") {
		t.Errorf("the log does not say the brokers are unreachable:\n%s", env.logs)
	}

	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(data))
	if err != nil {
		t.Fatalf("restart the broker on port %d: %v", port, err)
	}
	t.Cleanup(c2.Close)
	eventually(t, 30*time.Second, "delivery to resume", func() bool { return env.metric(t, "callscope_spool_events") < 100 })
	stopWriter()
	n := written
	eventually(t, 30*time.Second, "the spool to empty", func() bool { return env.metric(t, "callscope_spool_events") == 0 })

	events := consume(t, brokers, testTopic, 60*time.Second, func(got []consumed) bool {
		seen := map[int]bool{}
		for _, c := range got {
			seen[c.seq] = true
		}
		return len(seen) == n
	})
	dups := checkStream(t, events, 0, n, false)
	resent := env.metric(t, "callscope_kafka_messages_resent_total")
	t.Logf("%d events over a %v outage; %d duplicates read, %v messages re-sent", n, outage, dups, resent)
	if float64(dups) > resent {
		t.Errorf("%d duplicates but only %v re-sends counted", dups, resent)
	}
	if d := takeDropped(k); d != 0 {
		t.Errorf("%d events dropped", d)
	}
	if !strings.Contains(env.logs.String(), "Kafka delivery resumed") {
		t.Errorf("the log does not say delivery resumed:\n%s", env.logs)
	}
}

// TestKafkaSlowBroker: a broker that holds produce requests holds back
// delivery, never Write.
func TestKafkaSlowBroker(t *testing.T) {
	const n = 20000
	c := newCluster(t)
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-release })
		return nil, nil, false // then handled as usual
	})
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	k := env.start(t)
	start := time.Now()
	for seq := 0; seq < n; seq += 100 {
		if err := k.Write(testMsgs(seq, seq+100)); err != nil {
			t.Fatal(err)
		}
	}
	// Spooling 12MB takes milliseconds; a Write that waited for the
	// broker would take the produce timeout (10s).
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("writing %d events took %v while the broker hung", n, d)
	}
	if got := env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events"); got != 0 {
		t.Fatalf("%v delivered while the broker held every produce request", got)
	}
	close(release)
	eventually(t, 30*time.Second, "delivery", func() bool { return env.metric(t, "callscope_spool_events") == 0 })
	checkStream(t, consume(t, c.ListenAddrs(), testTopic, 20*time.Second, atLeast(n)), 0, n, false)
}

const childEnv = "CALLSCOPE_KAFKA_TEST_CHILD"

// TestKafkaSurvivesSIGKILL: events spooled by a process that is killed
// are delivered by the next one.
func TestKafkaSurvivesSIGKILL(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		spoolChild(dir, os.Getenv(childEnv+"_BROKER"))
		return
	}
	const n = 5000
	dir := t.TempDir()
	deadBroker := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cmd := exec.Command(os.Args[0], "-test.run=^TestKafkaSurvivesSIGKILL$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir, childEnv+"_BROKER="+deadBroker, childEnv+"_N="+strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "spooled" {
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child ended with %v, want killed", err)
	}

	c := newCluster(t)
	env := newSinkEnv(t, c.ListenAddrs(), dir)
	k := env.start(t)
	eventually(t, 30*time.Second, "the spool to be delivered", func() bool {
		return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") >= n
	})
	events := consume(t, c.ListenAddrs(), testTopic, 20*time.Second, atLeast(n))
	checkStream(t, events, 0, n, false)
	if !strings.Contains(env.logs.String(), "spool holds records from a previous run") {
		t.Errorf("the log does not mention the spooled events:\n%s", env.logs)
	}
	var losses []collector.Loss
	if losses = k.TakeLosses(losses); len(losses) != 0 {
		t.Errorf("losses %+v after a kill between writes", losses)
	}
}

// spoolChild writes events its brokers never get, says so, and waits to
// be killed.
func spoolChild(dir, broker string) {
	n, _ := strconv.Atoi(os.Getenv(childEnv + "_N"))
	k, err := NewKafka(KafkaConfig{Brokers: []string{broker}, Topic: testTopic, ViolationsTopic: testViolations,
		SpoolDir: dir, SpoolMaxBytes: 64 << 20})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for seq := 0; seq < n; seq += 100 {
		if err := k.Write(testMsgs(seq, min(seq+100, n))); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Println("spooled")
	select {}
}

// TestKafkaTornWrite: a spool whose last record was cut short by a crash
// delivers the rest and reports the torn one.
func TestKafkaTornWrite(t *testing.T) {
	const n = 300
	dir := t.TempDir()
	port := freePort(t)
	brokers := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	env := newSinkEnv(t, brokers, dir)
	k := env.start(t)
	if err := k.Write(testMsgs(0, n)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	k.Close(ctx)
	cancel()

	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(last, fi.Size()-5); err != nil {
		t.Fatal(err)
	}

	newCluster(t, kfake.Ports(port))
	env = newSinkEnv(t, brokers, dir)
	k = env.start(t)
	if got := k.TakeLosses(nil); !slices.Equal(got, []collector.Loss{{Stage: StageSpool, Reason: ReasonSpoolCorrupt, Count: 1}}) {
		t.Errorf("TakeLosses = %+v, want the torn record", got)
	}
	if got := env.metric(t, "callscope_spool_dropped_events_total", "reason", "spool_corrupt"); got != 1 {
		t.Errorf("spool_corrupt metric = %v, want 1", got)
	}
	eventually(t, 20*time.Second, "delivery", func() bool {
		return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") >= n-1
	})
	events := consume(t, brokers, testTopic, 20*time.Second, atLeast(n-1))
	checkStream(t, events, 0, n-1, false)
	for _, e := range events {
		if e.seq == n-1 {
			t.Errorf("the torn record %d was delivered", e.seq)
		}
	}
	if !strings.Contains(env.logs.String(), "torn record") {
		t.Errorf("the log does not mention the torn record:\n%s", env.logs)
	}
}

// TestKafkaSpoolFull: with the broker down, the spool keeps to its bound,
// on disk and in memory, and counts what it drops; what it kept is
// delivered when the broker is back.
func TestKafkaSpoolFull(t *testing.T) {
	const max = 256 << 10
	dir := t.TempDir()
	port := freePort(t)
	brokers := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	env := newSinkEnv(t, brokers, dir)
	env.cfg.SpoolMaxBytes = max
	k := env.start(t)

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var dropped uint64
	n := 0
	write := func(count int) {
		for i := 0; i < count; i += 100 {
			if err := k.Write(testMsgs(n, n+100)); err != nil {
				t.Fatal(err)
			}
			n += 100
			dropped += takeDropped(k)
			if size := dirBytes(t, dir); size > max+64 {
				t.Fatalf("after %d events the spool directory holds %d bytes, bound %d", n, size, max)
			}
		}
	}
	write(5000) // ~3MB: well past the bound
	heapBefore := heap()
	write(20000) // ~12MB more
	heapAfter := heap()
	if heapAfter > heapBefore+2<<20 {
		t.Errorf("heap grew from %d to %d bytes over 12MB of events spooled", heapBefore, heapAfter)
	}
	if dropped == 0 {
		t.Fatal("TakeLosses reported no spool_full")
	}
	if got := env.metric(t, "callscope_spool_dropped_events_total", "reason", "spool_full"); got != float64(dropped) {
		t.Errorf("spool_full metric = %v, TakeLosses summed %d", got, dropped)
	}
	if b := env.metric(t, "callscope_spool_bytes"); b > max || b < max/2 {
		t.Errorf("callscope_spool_bytes = %v, bound %d", b, max)
	}
	kept := int(env.metric(t, "callscope_spool_events"))

	newCluster(t, kfake.Ports(port))
	eventually(t, 30*time.Second, "the spool to be delivered", func() bool { return env.metric(t, "callscope_spool_events") == 0 })
	dropped += takeDropped(k)
	delivered := int(env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events"))
	if delivered+int(dropped) != n {
		t.Errorf("%d delivered + %d dropped != %d written (%d were spooled at the end of the outage)", delivered, dropped, n, kept)
	}
	// The newest are the ones kept; besides them, the batch that was in
	// flight when the outage began was delivered, not dropped.
	events := consume(t, brokers, testTopic, 20*time.Second, atLeast(delivered))
	checkStream(t, events, n-kept, n, false)
}

func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue // deleted meanwhile
		}
		n += fi.Size()
	}
	return n
}

func TestKafkaSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			c := newCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "agent", "s3cret=,"))
			env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
			env.cfg.SASLMechanism, env.cfg.SASLUsername, env.cfg.SASLPassword = strings.ToLower(mech), "agent", "s3cret=,"
			k := env.start(t)
			k.Write(testMsgs(0, 10))
			eventually(t, 20*time.Second, "delivery", func() bool {
				return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") == 10
			})
		})
	}
}

func TestKafkaWrongPassword(t *testing.T) {
	c := newCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "agent", "right"))
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	env.cfg.SASLMechanism, env.cfg.SASLUsername, env.cfg.SASLPassword = "scram-sha-256", "agent", "wrong"
	k := env.start(t)
	eventually(t, 20*time.Second, "the log to say authentication failed", func() bool {
		return strings.Contains(env.logs.String(), "Kafka authentication failed")
	})
	if err := k.Write(testMsgs(0, 100)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "auth failures counted", func() bool {
		return env.metric(t, "callscope_kafka_delivery_failures_total", "reason", "auth") >= 2
	})
	if got := env.metric(t, "callscope_spool_events"); got != 100 {
		t.Errorf("%v events spooled, want 100", got)
	}
	if got := env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events"); got != 0 {
		t.Errorf("%v delivered with a wrong password", got)
	}
	// Rate limited: one line however many attempts.
	if n := strings.Count(env.logs.String(), "Kafka authentication failed"); n != 1 {
		t.Errorf("authentication failure logged %d times, want once a minute", n)
	}
}

func TestKafkaMissingTopic(t *testing.T) {
	c := newCluster(t)
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	env.cfg.Topic = "not.there"
	k := env.start(t)
	k.Write(testMsgs(0, 10))
	eventually(t, 20*time.Second, "the log to say the topic is missing", func() bool {
		l := env.logs.String()
		return strings.Contains(l, "does not exist") && strings.Contains(l, "not.there")
	})
	eventually(t, 20*time.Second, "unknown_topic failures counted", func() bool {
		return env.metric(t, "callscope_kafka_delivery_failures_total", "reason", "unknown_topic") > 0
	})
	if got := env.metric(t, "callscope_spool_events"); got != 10 {
		t.Errorf("%v events spooled, want 10", got)
	}
}

func TestNewKafkaConfigErrors(t *testing.T) {
	base := KafkaConfig{Brokers: []string{"k:9092"}, Topic: "t", SpoolDir: t.TempDir(), SpoolMaxBytes: 1 << 20}
	for name, tc := range map[string]struct {
		edit func(*KafkaConfig)
		want string
	}{
		"no brokers":     {func(c *KafkaConfig) { c.Brokers = []string{" "} }, "no brokers"},
		"bad broker":     {func(c *KafkaConfig) { c.Brokers = []string{"k"} }, `"k": want host:port`},
		"no topic":       {func(c *KafkaConfig) { c.Topic = "" }, "no topic"},
		"bad mechanism":  {func(c *KafkaConfig) { c.SASLMechanism = "gssapi"; c.SASLUsername = "u" }, "want plain, scram-sha-256 or scram-sha-512"},
		"sasl no user":   {func(c *KafkaConfig) { c.SASLMechanism = "plain" }, "user name"},
		"no spool bound": {func(c *KafkaConfig) { c.SpoolMaxBytes = 0 }, "size bound"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			k, err := NewKafka(cfg)
			if err == nil {
				k.Close(context.Background())
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestKafkaTLSConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := KafkaTLSConfig("", filepath.Join(dir, "cert.pem"), ""); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("certificate without key: %v", err)
	}
	if _, err := KafkaTLSConfig(filepath.Join(dir, "missing.pem"), "", ""); err == nil {
		t.Error("missing CA file: no error")
	}
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	if _, err := KafkaTLSConfig(notPEM, "", ""); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("CA file without PEM: %v", err)
	}
	cfg, err := KafkaTLSConfig("", "", "")
	if err != nil || cfg.RootCAs != nil || cfg.MinVersion == 0 {
		t.Errorf("default config %+v, %v: want the system's CAs", cfg, err)
	}
}

func TestKafkaTLS(t *testing.T) {
	ca := newTestPKI(t, "broker CA")
	c := newCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{ca.brokerCert(t)}}))
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	var err error
	if env.cfg.TLS, err = KafkaTLSConfig(ca.caFile, "", ""); err != nil {
		t.Fatal(err)
	}
	k := env.start(t)
	k.Write(testMsgs(0, 10))
	eventually(t, 20*time.Second, "delivery over TLS", func() bool {
		return env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") == 10
	})

	// A broker whose certificate the CAs do not vouch for gets nothing,
	// over TLS or otherwise.
	otherCA := newTestPKI(t, "broker CA")
	env = newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	if env.cfg.TLS, err = KafkaTLSConfig(otherCA.caFile, "", ""); err != nil {
		t.Fatal(err)
	}
	k = env.start(t)
	k.Write(testMsgs(0, 10))
	eventually(t, 20*time.Second, "the log to say TLS failed", func() bool {
		return strings.Contains(env.logs.String(), "TLS with the Kafka brokers failed")
	})
	if got := env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events"); got != 0 {
		t.Errorf("%v delivered to a broker with an unknown certificate", got)
	}
}

func TestMurmur2MatchesKafka(t *testing.T) {
	k := &Kafka{}
	parts := []int{0, 1, 2, 3, 4, 5, 6}
	for i := range 1000 {
		key := fmt.Appendf(nil, "spiffe://cluster.local/ns/n%d/sa/s%d", i, i*7)
		key = key[:min(len(key), 1+i%50)] // keyless events go round-robin
		want := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: key}, parts...)
		if got := k.partition(key, len(parts)); int(got) != want {
			t.Fatalf("key %q: partition %d, want %d", key, got, want)
		}
	}
}

func TestKafkaFailureReasons(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("metadata: %w", kafka.SASLAuthenticationFailed), "auth"},
		{fmt.Errorf("topic x: %w", kafka.UnknownTopicOrPartition), "unknown_topic"},
		{fmt.Errorf("topic x: %w", kafka.TopicAuthorizationFailed), "unauthorized"},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "unreachable"},
		{fmt.Errorf("produce: %w", io.ErrUnexpectedEOF), "connection"},
		{context.DeadlineExceeded, "timeout"},
		{kafka.NotLeaderForPartition, "broker"},
		{kafka.MessageSizeTooLarge, "rejected"},
		// A handshake the broker never answered, or hung up on, is TLS.
		{fmt.Errorf("metadata: %w", &tlsHandshakeError{addr: "k:9093", err: context.DeadlineExceeded}), "tls"},
		{fmt.Errorf("metadata: %w", &tlsHandshakeError{addr: "k:9093", err: io.EOF}), "tls"},
		{fmt.Errorf("metadata: %w", &tlsHandshakeError{addr: "k:9093", err: tls.RecordHeaderError{Msg: "tls: first record does not look like a TLS handshake"}}), "tls"},
	} {
		if got, _ := kafkaFailure(tc.err); got != tc.want || !slices.Contains(failureReasons, got) {
			t.Errorf("kafkaFailure(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// BenchmarkKafkaWrite measures events from Write to acknowledged by a
// broker on loopback, in batches of 256 events of about 600 bytes.
func BenchmarkKafkaWrite(b *testing.B) {
	c := newCluster(b, kfake.BlackholeProduce())
	env := newSinkEnv(b, c.ListenAddrs(), b.TempDir())
	env.cfg.SpoolMaxBytes = 1 << 30
	env.cfg.ViolationsTopic = ""
	k := env.start(b)
	batch := testMsgs(1, 257)
	for i := range batch {
		batch[i].Key = []byte(identities[i%len(identities)])
	}
	k.Write(batch) // connect, and warm up
	eventually(b, 10*time.Second, "warm-up", func() bool { return env.metric(b, "callscope_spool_events") == 0 })
	b.SetBytes(int64(len(batch[0].Value)) * int64(len(batch)))
	b.ReportAllocs()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	for b.Loop() {
		if err := k.Write(batch); err != nil {
			b.Fatal(err)
		}
		// Writing outpaces any broker: keep to what it takes, so that
		// what is measured is delivery.
		for k.spool.Len() > 32<<10 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	for k.spool.Len() > 0 {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	msgs := float64(b.N * len(batch))
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(msgs/elapsed.Seconds(), "msgs/s")
	// CPU of the whole process, broker included, per event: steadier
	// than msgs/s on a busy machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/msgs, "cpu-ns/msg")
	if d := takeDropped(k); d != 0 {
		b.Fatalf("%d dropped", d)
	}
}

// takeDropped is what TakeLosses reports dropped because the spool was full.
func takeDropped(k *Kafka) uint64 {
	var n uint64
	for _, l := range k.TakeLosses(nil) {
		if l.Reason == ReasonSpoolFull {
			n += l.Count
		}
	}
	return n
}
