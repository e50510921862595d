package exporter

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/scope"
)

// writeRecorder keeps every Write it gets, separately.
type writeRecorder struct {
	writes [][]byte
	err    error
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

func batch(n int) []scope.Event {
	events := make([]scope.Event, n)
	for i := range events {
		events[i].Event = connectEvent()
	}
	return events
}

// jsonLines is a Stream writing to stdout only.
type jsonLines struct{ s *Stream }

func NewJSONLines(w io.Writer, enc *Encoder) jsonLines { return jsonLines{NewStream(enc, w, nil, nil)} }

func (j jsonLines) Write(events []scope.Event) error { return j.s.Write(events) }

func TestJSONLinesWrite(t *testing.T) {
	var w writeRecorder
	j := NewJSONLines(&w, NewEncoder("worker-1", "inst"))
	if err := j.Write(batch(3)); err != nil {
		t.Fatal(err)
	}
	if err := j.Write(nil); err != nil {
		t.Fatal(err)
	}
	if err := j.Write(batch(2)); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 2 {
		t.Fatalf("got %d writes, want one per non-empty batch (2)", len(w.writes))
	}
	seq := 0
	for i, want := range []int{3, 2} {
		lines := bytes.SplitAfter(w.writes[i], []byte("\n"))
		if last := lines[len(lines)-1]; len(last) != 0 {
			t.Fatalf("write %d does not end in a newline: %q", i, last)
		}
		lines = lines[:len(lines)-1]
		if len(lines) != want {
			t.Fatalf("write %d has %d lines, want %d", i, len(lines), want)
		}
		for _, line := range lines {
			seq++
			m := decodeLine(t, line)
			if m["seq"] != float64(seq) || m["id"] != "inst-"+strconv.Itoa(seq) {
				t.Errorf("line %d: seq %v id %v", seq, m["seq"], m["id"])
			}
		}
	}
}

func TestJSONLinesWriteError(t *testing.T) {
	errBroken := errors.New("broken pipe")
	j := NewJSONLines(&writeRecorder{err: errBroken}, NewEncoder("", "inst"))
	err := j.Write(batch(1))
	if !errors.Is(err, errBroken) {
		t.Fatalf("Write error = %v, want it to wrap %v", err, errBroken)
	}
	if want := "write events to stdout: broken pipe"; err.Error() != want {
		t.Errorf("Write error = %q, want %q", err, want)
	}
}

// TestJSONLinesReportsFailedWrites: events a failed write lost are
// announced by a loss event at the head of the next write that succeeds.
func TestJSONLinesReportsFailedWrites(t *testing.T) {
	w := &writeRecorder{err: errors.New("EAGAIN")}
	j := NewJSONLines(w, NewEncoder("", "inst"))
	j.Write(batch(2))
	j.Write(batch(3))
	w.err = nil
	if err := j.Write(batch(1)); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(w.writes[2]), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want a loss event and the event: %q", len(lines), lines)
	}
	var loss struct {
		Seq  uint64
		Kind string
		Loss struct {
			Stage, Reason string
			Count         uint64
		}
	}
	if err := json.Unmarshal([]byte(lines[0]), &loss); err != nil {
		t.Fatal(err)
	}
	if loss.Kind != "loss" || loss.Loss.Stage != "stdout" || loss.Loss.Reason != "write_failed" || loss.Loss.Count != 6 || loss.Seq != 7 {
		t.Errorf("loss event %+v, want seq 7 saying the 6 before it were lost at stdout", loss)
	}
	// Reported once only.
	j.Write(batch(1))
	if strings.Contains(string(w.writes[3]), `"loss"`) {
		t.Errorf("loss reported twice: %s", w.writes[3])
	}
}

func TestJSONLinesAllocs(t *testing.T) {
	events := batch(64)
	j := NewJSONLines(io.Discard, NewEncoder("worker-1", "inst"))
	if err := j.Write(events); err != nil { // grows the buffer once
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := j.Write(events); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Write allocates %v times per batch in steady state, want 0", allocs)
	}
}

func BenchmarkJSONLinesWrite(b *testing.B) {
	events := batch(256)
	j := NewJSONLines(io.Discard, NewEncoder("worker-1", "3f2a9c"))
	if err := j.Write(events); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(j.s.buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := j.Write(events); err != nil {
			b.Fatal(err)
		}
	}
}

// fakeSink takes messages and reports the losses it is given.
type fakeSink struct {
	msgs   []Message
	losses []collector.Loss
}

func (f *fakeSink) Write(msgs []Message) error {
	for _, m := range msgs {
		f.msgs = append(f.msgs, Message{Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value), Violation: m.Violation})
	}
	return nil
}

func (f *fakeSink) TakeLosses(dst []collector.Loss) []collector.Loss {
	dst = append(dst, f.losses...)
	f.losses = nil
	return dst
}

// TestStreamReportsSinkLosses: what the message sink lost leads the next
// batch, as a loss event on every sink, once.
func TestStreamReportsSinkLosses(t *testing.T) {
	var w writeRecorder
	sink := &fakeSink{losses: []collector.Loss{{Stage: StageSpool, Reason: ReasonSpoolFull, Count: 40}}}
	s := NewStream(NewEncoder("", "inst"), &w, sink, nil)
	if err := s.Write(batch(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(batch(1)); err != nil {
		t.Fatal(err)
	}
	if len(sink.msgs) != 3 {
		t.Fatalf("%d messages, want a loss event and two events", len(sink.msgs))
	}
	loss := decodeLine(t, append(sink.msgs[0].Value, '\n'))
	if l, ok := loss["loss"].(map[string]any); !ok || loss["kind"] != "loss" || l["stage"] != "spool" || l["reason"] != "spool_full" || l["count"] != float64(40) {
		t.Errorf("first message %v, want the spool's loss", loss)
	}
	if len(sink.msgs[0].Key) != 0 || len(sink.msgs[1].Key) == 0 {
		t.Errorf("keys %q, %q: want none for the loss event, the identity for the event", sink.msgs[0].Key, sink.msgs[1].Key)
	}
	if !strings.HasPrefix(string(w.writes[0]), `{"schema":"callscope/v1","id":"inst-1","seq":1,`) || !strings.Contains(string(w.writes[0]), `"kind":"loss"`) {
		t.Errorf("stdout does not lead with the loss event: %s", w.writes[0])
	}
}

// TestStreamOCSF: with the OCSF encoder, stdout and both topics carry the
// same OCSF records, a sink's loss first, violations flagged for the
// violations topic, and every record valid.
func TestStreamOCSF(t *testing.T) {
	schema := ocsfSchema(t)
	var w writeRecorder
	sink := &fakeSink{losses: []collector.Loss{{Stage: StageSpool, Reason: ReasonSpoolFull, Count: 40}}}
	s := NewStream(NewOCSFEncoder("worker-1", "inst", "v1"), &w, sink, nil)
	allowed, violation := scope.Event{Event: connectEvent()}, scope.Event{Event: connectEvent()}
	allowed.Scope.Verdict, violation.Scope.Verdict = scope.Allowed, scope.Violation
	if err := s.Write([]scope.Event{allowed, violation}); err != nil {
		t.Fatal(err)
	}
	if len(sink.msgs) != 3 {
		t.Fatalf("%d messages, want a loss and two records", len(sink.msgs))
	}
	lines := bytes.SplitAfter(w.writes[0], []byte("\n"))
	for i, m := range sink.msgs {
		if !bytes.Equal(append(bytes.Clone(m.Value), '\n'), lines[i]) {
			t.Errorf("message %d differs from stdout's line:\n%s\n%s", i, m.Value, lines[i])
		}
		if err := schema.Check(m.Value); err != nil {
			t.Errorf("message %d: %v\n%s", i, err, m.Value)
		}
		if want := i == 2; m.Violation != want {
			t.Errorf("message %d: Violation %v, want %v", i, m.Violation, want)
		}
	}
	if !bytes.HasPrefix(sink.msgs[0].Value, []byte(`{"class_uid":1008,`)) || !bytes.Contains(sink.msgs[0].Value, []byte(`"loss":{"stage":"spool","reason":"spool_full","count":40}`)) {
		t.Errorf("first message is not the spool's loss: %s", sink.msgs[0].Value)
	}
}
