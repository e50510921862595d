package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func rec(i int) Record {
	r := Record{
		Time:  int64(1700000000000 + i),
		Key:   fmt.Appendf(nil, "spiffe://cluster.local/ns/a/sa/%d", i%7),
		Value: fmt.Appendf(nil, `{"seq":%d,"pad":"%s"}`, i, strings.Repeat("x", i%50)),
	}
	if i%3 == 0 {
		r.Flags = FlagViolation
	}
	return r
}

func recs(from, to int) []Record {
	var out []Record
	for i := from; i < to; i++ {
		out = append(out, rec(i))
	}
	return out
}

func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// drain takes batches until the spool is empty, acknowledging each, and
// returns their records' seq numbers (parsed back from the values).
func drain(t *testing.T, s *Spool, maxBytes int) (seqs []int, resent int) {
	t.Helper()
	var b Batch
	for s.Len() > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Next(ctx, &b, maxBytes)
		cancel()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		for _, r := range b.Records {
			seqs = append(seqs, seqOf(t, r))
		}
		resent += b.Resent
		s.Ack(&b)
	}
	return seqs, resent
}

func seqOf(t *testing.T, r Record) int {
	t.Helper()
	var seq int
	if _, err := fmt.Sscanf(string(r.Value), `{"seq":%d,`, &seq); err != nil {
		t.Fatalf("record %q: %v", r.Value, err)
	}
	want := rec(seq)
	if r.Flags != want.Flags || r.Time != want.Time || string(r.Key) != string(want.Key) || string(r.Value) != string(want.Value) {
		t.Fatalf("record %d came back as %+v, want %+v", seq, r, want)
	}
	return seq
}

func seqRange(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func segmentBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, p := range segments(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func TestInOrderAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20, SegmentBytes: 4 << 10})
	for i := 0; i < 1000; i += 100 {
		if err := s.Append(recs(i, i+100)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segments(t, dir)); n < 5 {
		t.Fatalf("%d segments, want several of 4KiB", n)
	}
	got, resent := drain(t, s, 3000)
	if !slices.Equal(got, seqRange(0, 1000)) {
		t.Fatalf("got %d records, not 0..999 in order: %v", len(got), got)
	}
	if resent != 0 {
		t.Errorf("Resent = %d on a first delivery", resent)
	}
	// Acknowledged segments are gone, but for the one appended to.
	if n := len(segments(t, dir)); n != 1 {
		t.Errorf("%d segments left after everything was acknowledged, want 1", n)
	}
	if st := s.Stats(); st.Records != 0 || st.Dropped != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestNextWaitsForAppend(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	got := make(chan error, 1)
	var b Batch
	go func() { got <- s.Next(context.Background(), &b, 1<<20) }()
	select {
	case err := <-got:
		t.Fatalf("Next returned %v on an empty spool", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := s.Append(recs(0, 3)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil || len(b.Records) != 3 {
		t.Fatalf("Next = %v with %d records, want 3", err, len(b.Records))
	}
	s.Ack(&b)

	ctx, cancel := context.WithCancel(context.Background())
	go func() { got <- s.Next(ctx, &b, 1<<20) }()
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Errorf("Next after cancel = %v", err)
	}
	go func() { got <- s.Next(context.Background(), &b, 1<<20) }()
	s.Close()
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close = %v", err)
	}
}

// TestReopen: a new process goes on where the last one was acknowledged,
// and knows which records it may have delivered already.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 1 << 20, SegmentBytes: 4 << 10}
	s := open(t, dir, opts)
	if err := s.Append(recs(0, 500)); err != nil {
		t.Fatal(err)
	}
	var b Batch
	if err := s.Next(context.Background(), &b, 2000); err != nil {
		t.Fatal(err)
	}
	acked := len(b.Records)
	s.Ack(&b)
	// Handed out, never acknowledged: the process stops mid-delivery.
	if err := s.Next(context.Background(), &b, 2000); err != nil {
		t.Fatal(err)
	}
	inflight := len(b.Records)
	s.Close()

	s = open(t, dir, opts)
	if err := s.Append(recs(500, 600)); err != nil {
		t.Fatal(err)
	}
	got, resent := drain(t, s, 2000)
	if !slices.Equal(got, seqRange(acked, 600)) {
		t.Fatalf("after reopening got %v, want %d..599", got, acked)
	}
	if resent != inflight {
		t.Errorf("Resent = %d, want the %d records in flight when it closed", resent, inflight)
	}
}

// TestReopenNumbering: segment names never repeat, even when the spool was
// empty at close.
func TestReopenNumbering(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	s.Append(recs(0, 10))
	drain(t, s, 1<<20)
	s.Close()
	s = open(t, dir, Options{MaxBytes: 1 << 20})
	s.Append(recs(10, 20))
	if got, _ := drain(t, s, 1<<20); !slices.Equal(got, seqRange(10, 20)) {
		t.Fatalf("got %v", got)
	}
	if s.next != 20 {
		t.Errorf("numbering restarted: next = %d, want 20", s.next)
	}
}

func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 1 << 20}
	s := open(t, dir, opts)
	if err := s.Append(recs(0, 100)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	segs := segments(t, dir)
	last := segs[len(segs)-1]
	fi, _ := os.Stat(last)
	if err := os.Truncate(last, fi.Size()-3); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, opts)
	if _, got := s.TakeLosses(); got != 1 {
		t.Errorf("TakeLosses corrupt = %d, want the torn record", got)
	}
	if _, got := s.TakeLosses(); got != 0 {
		t.Errorf("TakeLosses corrupt again = %d, want 0", got)
	}
	if err := s.Append(recs(100, 110)); err != nil {
		t.Fatal(err)
	}
	got, _ := drain(t, s, 1<<20)
	want := append(seqRange(0, 99), seqRange(100, 110)...)
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want all but the torn 99", got)
	}
	if st := s.Stats(); st.Corrupt != 1 {
		t.Errorf("Stats.Corrupt = %d", st.Corrupt)
	}
}

// TestTornHeader: a crash right after a segment was created.
func TestTornHeader(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	s.Append(recs(0, 5))
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, "0000000000000005.seg"), []byte("CSSPO"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{MaxBytes: 1 << 20})
	if got, _ := drain(t, s, 1<<20); !slices.Equal(got, seqRange(0, 5)) {
		t.Fatalf("got %v", got)
	}
	if _, n := s.TakeLosses(); n != 0 {
		t.Errorf("a header-only segment counted %d corrupt records", n)
	}
}

func TestCorruptSealedSegment(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 1 << 20, SegmentBytes: 4 << 10}
	s := open(t, dir, opts)
	s.Append(recs(0, 300))
	s.Close()
	segs := segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments", len(segs))
	}
	// Flip a byte in the body of the second record of the second segment.
	data, _ := os.ReadFile(segs[1])
	_, n, err := parseRecord(data[headerSize:])
	if err != nil {
		t.Fatal(err)
	}
	data[headerSize+n+frameSize+5] ^= 0xff
	os.WriteFile(segs[1], data, 0o600)

	s = open(t, dir, opts)
	got, _ := drain(t, s, 1<<20)
	var base uint64
	fmt.Sscanf(filepath.Base(segs[1]), "%016x", &base)
	var next uint64
	fmt.Sscanf(filepath.Base(segs[2]), "%016x", &next)
	lost := int(next - base - 1)
	want := append(seqRange(0, int(base)+1), seqRange(int(next), 300)...)
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, c := s.TakeLosses(); c != uint64(lost) {
		t.Errorf("TakeLosses corrupt = %d, want the %d records after the corrupt one in its segment", c, lost)
	}
}

// TestBound: the oldest go, counted, and the files never exceed the bound.
func TestBound(t *testing.T) {
	dir := t.TempDir()
	const max = 64 << 10
	s := open(t, dir, Options{MaxBytes: max})
	total := 0
	for i := 0; i < 5000; i += 50 {
		if err := s.Append(recs(i, i+50)); err != nil {
			t.Fatal(err)
		}
		total += 50
		if n := segmentBytes(t, dir); n > max {
			t.Fatalf("after %d records the segments hold %d bytes, over %d", total, n, max)
		}
		if st := s.Stats(); st.Bytes != segmentBytes(t, dir) {
			t.Fatalf("Stats.Bytes = %d, files %d", st.Bytes, segmentBytes(t, dir))
		}
	}
	dropped, _ := s.TakeLosses()
	if dropped == 0 {
		t.Fatal("nothing dropped")
	}
	if again, _ := s.TakeLosses(); again != 0 {
		t.Error("TakeLosses counted dropped twice")
	}
	got, _ := drain(t, s, 1<<20)
	if uint64(len(got))+dropped != uint64(total) {
		t.Errorf("%d delivered + %d dropped != %d appended", len(got), dropped, total)
	}
	// The newest are kept, in order.
	if !slices.Equal(got, seqRange(total-len(got), total)) {
		t.Errorf("kept %v, want the newest", got)
	}
}

// TestDropInFlight: records in flight when their segment is dropped count
// as dropped only if their delivery fails.
func TestDropInFlight(t *testing.T) {
	for _, ack := range []bool{true, false} {
		t.Run(fmt.Sprintf("ack=%v", ack), func(t *testing.T) {
			s := open(t, t.TempDir(), Options{MaxBytes: 32 << 10, SegmentBytes: 4 << 10})
			s.Append(recs(0, 20))
			var b Batch
			if err := s.Next(context.Background(), &b, 1<<20); err != nil {
				t.Fatal(err)
			}
			inflight := len(b.Records)
			total := 20
			for s.Stats().Dropped == 0 {
				s.Append(recs(total, total+20))
				total += 20
			}
			droppedBefore, _ := s.TakeLosses()
			if ack {
				s.Ack(&b)
			} else {
				s.Nack(&b)
			}
			droppedAfter, _ := s.TakeLosses()
			dropped := droppedBefore + droppedAfter
			delivered := 0
			if ack {
				delivered = inflight
			}
			got, _ := drain(t, s, 1<<20)
			delivered += len(got)
			if uint64(delivered)+dropped != uint64(total) {
				t.Errorf("%d delivered + %d dropped != %d appended", delivered, dropped, total)
			}
			if got[0] < inflight {
				t.Errorf("record %d of the dropped segment came back", got[0])
			}
		})
	}
}

func TestRecordTooLarge(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 8 << 10})
	big := rec(1)
	big.Value = make([]byte, 10<<10)
	if err := s.Append([]Record{rec(0), big, rec(2)}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.TakeLosses(); d != 1 {
		t.Errorf("TakeLosses dropped = %d, want the record larger than the bound", d)
	}
	if got, _ := drain(t, s, 1<<20); !slices.Equal(got, []int{0, 2}) {
		t.Errorf("got %v", got)
	}
}

// TestRecordLargerThanRead: Next hands out a record larger than it asked for.
func TestRecordLargerThanRead(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	s.Append(recs(0, 3))
	got, _ := drain(t, s, 10)
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("got %v", got)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, Options{MaxBytes: 1 << 20})
	if _, err := Open(dir, Options{MaxBytes: 1 << 20}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open = %v, want the directory in use", err)
	}
}

func TestCursorCorrupt(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	s.Append(recs(0, 10))
	var b Batch
	s.Next(context.Background(), &b, 100)
	s.Ack(&b)
	s.Close()
	os.WriteFile(filepath.Join(dir, cursorName), []byte("garbage garbage garbage"), 0o600)
	s = open(t, dir, Options{MaxBytes: 1 << 20})
	got, resent := drain(t, s, 1<<20)
	// At least once: everything kept goes again, counted as maybe sent.
	if !slices.Equal(got, seqRange(0, 10)) || resent != 10 {
		t.Errorf("got %v resent %d, want all 10 again, as resent", got, resent)
	}
}

func TestSyncWhileLagging(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20, SyncInterval: 10 * time.Millisecond})
	s.Append(recs(0, 10))
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		g := s.segs[0]
		synced := g.synced == g.size
		s.mu.Unlock()
		if synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("undelivered records never synced")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkAppend(b *testing.B) {
	s, err := Open(b.TempDir(), Options{MaxBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch := make([]Record, 256)
	for i := range batch {
		batch[i] = Record{Key: []byte("spiffe://cluster.local/ns/payments/sa/billing"), Value: make([]byte, 600)}
	}
	b.SetBytes(int64(len(batch) * 600))
	b.ReportAllocs()
	// Delivered as fast as appended, as when Kafka keeps up.
	go func() {
		var bt Batch
		for s.Next(context.Background(), &bt, 1<<20) == nil {
			s.Ack(&bt)
		}
	}()
	for b.Loop() {
		if err := s.Append(batch); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAppendAllocs(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 30})
	batch := recs(0, 10)
	s.Append(batch) // creates the segment, grows the buffer
	if allocs := testing.AllocsPerRun(100, func() { s.Append(batch) }); allocs != 0 {
		t.Errorf("Append allocates %v times per call, want 0", allocs)
	}
}
