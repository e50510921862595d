package exporter

import (
	"errors"
	"fmt"
	"io"
	"time"
	"unsafe"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// Loss stages and reasons of events a sink failed to deliver.
const (
	StageStdout       = "stdout"
	ReasonWriteFailed = "write_failed"
	StageSpool        = "spool"
	ReasonSpoolFull   = "spool_full"
)

// MessageSink takes events encoded as messages: Kafka.
type MessageSink interface {
	// Write takes the messages; it copies what it keeps.
	Write(msgs []Message) error
	// TakeLosses appends the events it lost since the last call.
	TakeLosses(dst []collector.Loss) []collector.Loss
}

// Message is one encoded event.
type Message struct {
	Key       []byte // the caller's identity: events of one caller stay in order; empty for loss events
	Value     []byte // one JSON object, no trailing newline
	Violation bool   // also goes to the violations topic
}

// Stream numbers each event, encodes it once and writes it to every sink:
// JSON lines to stdout, messages to Kafka. Not safe for concurrent use.
type Stream struct {
	enc    RecordEncoder
	m      *Metrics
	stdout io.Writer
	msgs   MessageSink
	buf    []byte    // reused from batch to batch
	out    []Message // reused from batch to batch
	// unwritten counts events of failed stdout writes not yet reported:
	// the next batch leads with a loss event, so the gap in seq is
	// explained in the stream itself.
	unwritten uint64
	losses    []scope.Event
	other     []collector.Loss
}

// NewStream returns a Stream numbering events with enc (an Encoder, or an
// OCSFEncoder) and writing them to
// stdout and msgs; either may be nil, and so may m, the metrics counting
// what was written and the sinks' failures.
func NewStream(enc RecordEncoder, stdout io.Writer, msgs MessageSink, m *Metrics) *Stream {
	return &Stream{enc: enc, stdout: stdout, msgs: msgs, m: m}
}

// Write encodes the batch, led by loss events for what a sink lost since
// the last batch, and writes it to stdout with a single write, so that
// lines from one batch are never interleaved with other output and a batch
// costs one syscall. It returns the errors of the sinks that failed; the
// batch counts as written when one sink took it.
func (s *Stream) Write(events []scope.Event) error {
	s.losses = s.losses[:0]
	now := time.Now().UnixNano()
	reported := s.unwritten
	if reported > 0 {
		s.losses = append(s.losses, lossEvent(now, reported, StageStdout, ReasonWriteFailed))
	}
	if s.msgs != nil {
		s.other = s.msgs.TakeLosses(s.other[:0])
		for _, l := range s.other {
			if l.Count > 0 {
				s.losses = append(s.losses, lossEvent(now, l.Count, l.Stage, l.Reason))
			}
		}
	}
	if len(events) == 0 && len(s.losses) == 0 {
		return nil
	}
	buf, out := s.buf[:0], s.out[:0]
	add := func(ev *scope.Event) {
		start := len(buf)
		buf = s.enc.Append(buf, ev)
		if s.msgs != nil {
			out = append(out, Message{
				Key:       unsafe.Slice(unsafe.StringData(ev.Identity), len(ev.Identity)),
				Value:     buf[start : len(buf)-1 : len(buf)-1],
				Violation: ev.Scope.Verdict == scope.Violation,
			})
		}
	}
	for i := range s.losses {
		add(&s.losses[i])
	}
	for i := range events {
		add(&events[i])
	}
	// A message made before buf grew points into its old array, which
	// still holds the line: nothing needs fixing.
	s.buf, s.out = buf, out

	var errs []error
	taken := s.stdout == nil && s.msgs == nil // counted even with no sink
	if s.stdout != nil {
		if _, err := s.stdout.Write(buf); err != nil {
			// Count every seq the failed write used, its loss events
			// included, so the count matches the gap a consumer sees.
			s.unwritten += uint64(len(events) + len(s.losses))
			errs = append(errs, fmt.Errorf("write events to stdout: %w", err))
			s.failed("stdout")
		} else {
			s.unwritten -= reported
			taken = true
		}
	}
	if s.msgs != nil {
		if err := s.msgs.Write(out); err != nil {
			errs = append(errs, fmt.Errorf("write events to kafka: %w", err))
			s.failed("kafka")
		} else {
			taken = true
		}
	}
	if taken && s.m != nil {
		s.m.Written(s.losses)
		s.m.Written(events)
	}
	return errors.Join(errs...)
}

func (s *Stream) failed(sink string) {
	if s.m != nil {
		s.m.SinkFailed(sink)
	}
}

func lossEvent(now int64, n uint64, stage, reason string) scope.Event {
	var ev scope.Event
	ev.Event = enrich.Event{Event: collector.Event{Kind: collector.KindLoss, Time: now, Lost: n, LossStage: stage, LossReason: reason}}
	return ev
}
