package collector

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// helloPiece is a ClientHello record as the kernel sends it: the socket's
// cgroup, and no caller.
func helloPiece(t *testing.T, cookie uint64) *payload {
	t.Helper()
	data, err := os.ReadFile("tlshello/testdata/clienthello/curl_h2.bin")
	if err != nil {
		t.Fatal(err)
	}
	return &payload{kind: connectKindKIND_TLS_CLIENT, head: Event{Cookie: cookie, CgroupID: 7}, want: len(data), data: data}
}

// TestHelloTakesConnectCaller: a tls event carries the caller of the
// established connect with its cookie, and one without such a connect is
// still sent, with the socket's cgroup, and counted.
func TestHelloTakesConnectCaller(t *testing.T) {
	var got []Event
	a := newAssembler(func(e *Event) { got = append(got, *e) })
	c := caller{pid: 42, tid: 43, uid: 1000, gid: 1001, cgroup: 9, procStart: 12345, netns: 4026531840, comm: [16]byte{'c', 'u', 'r', 'l'}}
	a.connected(1, &c)

	now := time.Now()
	a.add(helloPiece(t, 1), now)
	a.add(helloPiece(t, 2), now)
	a.expire(now.Add(helloWait), false)

	if len(got) != 2 {
		t.Fatalf("%d tls events, want 2", len(got))
	}
	byCookie := map[uint64]Event{got[0].Cookie: got[0], got[1].Cookie: got[1]}
	e := byCookie[1]
	if e.Kind != KindTLS || e.PID != 42 || e.TID != 43 || e.UID != 1000 || e.GID != 1001 || e.CgroupID != 9 ||
		e.ProcStart != 12345 || e.NetNS != 4026531840 || e.CommString() != "curl" || e.Hello == nil {
		t.Errorf("tls event %+v, want the connect's caller and a hello", e)
	}
	if e := byCookie[2]; e.PID != 0 || e.CgroupID != 7 || e.Hello == nil {
		t.Errorf("unattributed tls event %+v, want no process, cgroup 7 and a hello", e)
	}
	if a.stats.Unattributed != 1 || a.stats.ClientHellos != 2 {
		t.Errorf("stats %+v, want 1 unattributed of 2", a.stats)
	}
	if _, ok := a.callers.take(1); ok {
		t.Errorf("caller of cookie 1 kept after its hello")
	}
}

// TestHelloCallersByExactCookie: the kernel hands out socket cookies in
// per-CPU batches, so cookies far apart are in use at once; each hello
// gets the caller of its own connect however the cookies relate.
func TestHelloCallersByExactCookie(t *testing.T) {
	var got []Event
	a := newAssembler(func(e *Event) { got = append(got, *e) })
	cookies := []uint64{4096, 4096 + 16384, 4096 + 32768, 1 << 40}
	for i, cookie := range cookies {
		a.connected(cookie, &caller{pid: uint32(100 + i)})
	}
	now := time.Now()
	for _, cookie := range cookies {
		a.add(helloPiece(t, cookie), now)
	}
	a.expire(now.Add(helloWait), false)
	if len(got) != len(cookies) {
		t.Fatalf("%d tls events, want %d", len(got), len(cookies))
	}
	for _, e := range got {
		i := slices.Index(cookies, e.Cookie)
		if e.PID != uint32(100+i) {
			t.Errorf("hello of cookie %d has pid %d, want %d", e.Cookie, e.PID, 100+i)
		}
	}
	if a.stats.Unattributed != 0 {
		t.Errorf("%d unattributed", a.stats.Unattributed)
	}
}

// TestCallerRing: the ring keeps exactly the callers of the last
// maxCallers connects, however many were taken or connected twice on the
// way, and holds no more.
func TestCallerRing(t *testing.T) {
	r := newCallerRing()
	// The model: each cookie held, and when it was last put.
	puts := 0
	lastPut := map[uint64]int{}
	put := func(cookie uint64) {
		r.put(cookie, &caller{pid: uint32(cookie)})
		puts++
		lastPut[cookie] = puts
	}
	// Twice around the ring: every third connect's hello takes its caller
	// at once, and every seventh connect comes with another of a socket
	// that connected 1,500 connects before.
	const n = 2*maxCallers + 100
	for cookie := uint64(1); cookie <= n; cookie++ {
		put(cookie)
		if cookie%3 == 0 {
			if c, ok := r.take(cookie); !ok || c.pid != uint32(cookie) {
				t.Fatalf("take(%d) = %+v, %v", cookie, c, ok)
			}
			delete(lastPut, cookie)
		}
		if cookie%7 == 0 && cookie > 1500 {
			put(cookie - 1500)
		}
		if r.len() > maxCallers {
			t.Fatalf("%d callers held, at most %d", r.len(), maxCallers)
		}
	}
	kept := 0
	for cookie := uint64(1); cookie <= n; cookie++ {
		last, held := lastPut[cookie]
		want := held && last > puts-maxCallers
		if want {
			kept++
		}
		c, ok := r.take(cookie)
		if ok != want {
			t.Errorf("cookie %d kept: %v, want %v", cookie, ok, want)
		} else if ok && c.pid != uint32(cookie) {
			t.Errorf("cookie %d has the caller of %d", cookie, c.pid)
		}
	}
	if kept < maxCallers/2 {
		t.Errorf("only %d callers expected kept: the test does not exercise the ring", kept)
	}
	if r.len() != 0 {
		t.Errorf("%d callers left after taking every one", r.len())
	}
}

// TestInflightLimit: connects awaiting their outcome are held up to the
// limit; at the limit a held cookie is still updated and a new one
// refused, and a slot freed by a take is reused.
func TestInflightLimit(t *testing.T) {
	var f inflight
	// Times differ from the zero value, so that an empty slot cannot pass.
	st := func(n int64) *started { return &started{time: n + 100} }
	for _, c := range []uint64{0, 1, 2, 3} { // 0 too: a record could carry it
		if !f.put(c, st(int64(c)), 4) {
			t.Fatalf("cookie %d refused below the limit", c)
		}
	}
	if f.put(9, st(9), 4) {
		t.Error("a fifth connect held at a limit of 4")
	}
	if !f.put(2, st(20), 4) {
		t.Error("a held cookie refused at the limit")
	}
	if s, ok := f.take(2); !ok || s.time != 120 {
		t.Errorf("take(2) = %+v, %v; want the update at the limit", s, ok)
	}
	if _, ok := f.take(2); ok {
		t.Error("cookie 2 taken twice")
	}
	if !f.put(9, st(9), 4) {
		t.Error("no room after a take")
	}
	if len(f.slots) != 4 {
		t.Errorf("%d slots for 4 connects: the freed one was not reused", len(f.slots))
	}
	for _, c := range []uint64{0, 1, 3, 9} {
		if s, ok := f.take(c); !ok || s.time != int64(c)+100 {
			t.Errorf("take(%d) = %+v, %v", c, s, ok)
		}
	}
	if f.len() != 0 {
		t.Errorf("%d held after taking all", f.len())
	}
}

// joinCollector is a collector with only what joining start and outcome
// records needs.
func joinCollector() *Collector {
	c := &Collector{cfg: Config{MaxInFlight: 1024, BatchSize: 256}}
	c.batch = &Batch{Events: make([]Event, 0, 256)}
	c.hellos = newAssembler(func(*Event) {})
	return c
}

// TestJoinAllocatesNothing: keeping a start record and completing it with
// its outcome allocate nothing, so a busy node makes no garbage per connect.
func TestJoinAllocatesNothing(t *testing.T) {
	c := joinCollector()
	start := record(t, startEvent())
	outcome := encode(t, connectHeader{Cookie: 0xc0ffee, TsNs: 5, Kind: uint8(connectKindKIND_OUTCOME), Outcome: uint8(connectOutcomeOUTCOME_ESTABLISHED)})
	c.start(start, 0)
	c.outcome(outcome, 0)
	if len(c.batch.Events) != 1 {
		t.Fatalf("%d events, want 1", len(c.batch.Events))
	}
	e := c.batch.Events[0]
	if e.Kind != KindConnect || e.Outcome != OutcomeEstablished || e.PID != 4242 || e.Time != 5 || e.Dst.Port() != 443 || e.CommString() != "billing" {
		t.Errorf("joined event %+v", e)
	}
	if n := c.inflight.len(); n != 0 {
		t.Errorf("%d connects still held", n)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		c.batch.Events = c.batch.Events[:0]
		c.start(start, 0)
		c.outcome(outcome, 0)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per connect, want 0", allocs)
	}
}

// BenchmarkJoin joins starts and outcomes as a busy node gives them: new
// cookies all the time, with some connects (64, or 8,192 on a node whose
// connects wait on slow peers) still waiting for their outcome while
// others start.
func BenchmarkJoin(b *testing.B) {
	for _, waiting := range []int{64, 8192} {
		b.Run(fmt.Sprintf("waiting=%d", waiting), func(b *testing.B) {
			c := joinCollector()
			c.cfg.MaxInFlight = 32768
			ev := startEvent()
			starts := make([][]byte, 4*waiting)
			outcomes := make([][]byte, len(starts))
			for i := range starts {
				ev.H.Cookie = uint64(i + 1)
				starts[i] = record(b, ev)
				outcomes[i] = encode(b, connectHeader{Cookie: uint64(i + 1), TsNs: 5, Kind: uint8(connectKindKIND_OUTCOME), Outcome: uint8(connectOutcomeOUTCOME_ESTABLISHED)})
			}
			for i := range waiting {
				c.start(starts[i], 0)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				c.batch.Events = c.batch.Events[:0] // as the pipeline takes each batch
				c.start(starts[(i+waiting)%len(starts)], 0)
				c.outcome(outcomes[i%len(starts)], 0)
				i++
			}
		})
	}
}

// TestEveryRecordKindIsRead: each kind the programs' enum declares has a
// case in Collector.record, so a kind added to records.h without one fails
// here rather than being dropped as malformed on a node.
func TestEveryRecordKindIsRead(t *testing.T) {
	var logged bytes.Buffer
	c := joinCollector()
	c.log = slog.New(slog.NewTextHandler(&logged, nil))
	unknown := func(k connectKind) bool {
		logged.Reset()
		c.record(encode(t, connectHeader{Cookie: 1, TsNs: 1, Kind: uint8(k)}), 0)
		return strings.Contains(logged.String(), fmt.Sprintf("kind %d", k))
	}
	for k := connectKind(1); k < connectKindKIND_MAX; k++ {
		if unknown(k) {
			t.Errorf("record kind %d is not read: %s", k, logged.String())
		}
	}
	if !unknown(connectKindKIND_MAX) {
		t.Errorf("kind %d, past the enum, was not refused as unknown: %q", connectKindKIND_MAX, logged.String())
	}
}
