package exporter

import (
	"fmt"
	"io"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

// JSONLines writes events as JSON lines to w (stdout in the agent), one
// write per batch. Not safe for concurrent use.
type JSONLines struct {
	w   io.Writer
	enc *Encoder
	buf []byte // reused from batch to batch
	// unwritten counts events of failed writes not yet reported: the next
	// write that succeeds leads with a loss event, so the gap in seq is
	// explained in the stream itself.
	unwritten uint64
}

// Loss stage and reason of events a sink failed to write.
const (
	StageStdout       = "stdout"
	ReasonWriteFailed = "write_failed"
)

// NewJSONLines returns a JSONLines writing to w, numbering events with enc.
func NewJSONLines(w io.Writer, enc *Encoder) *JSONLines {
	return &JSONLines{w: w, enc: enc}
}

// Write encodes the batch and writes it with a single w.Write, so that
// lines from one batch are never interleaved with other output to w, and
// a batch costs one syscall.
func (j *JSONLines) Write(events []enrich.Event) error {
	if len(events) == 0 {
		return nil
	}
	buf := j.buf[:0]
	reported := j.unwritten
	if reported > 0 {
		var loss enrich.Event
		loss.Kind, loss.Time = collector.KindLoss, time.Now().UnixNano()
		loss.Lost, loss.LossStage, loss.LossReason = reported, StageStdout, ReasonWriteFailed
		buf = j.enc.Append(buf, &loss)
	}
	for i := range events {
		buf = j.enc.Append(buf, &events[i])
	}
	j.buf = buf
	if _, err := j.w.Write(buf); err != nil {
		// Count every seq the failed write used, its own loss event
		// included, so the count matches the gap a consumer sees.
		j.unwritten += uint64(len(events))
		if reported > 0 {
			j.unwritten++
		}
		return fmt.Errorf("write events to stdout: %w", err)
	}
	j.unwritten -= reported
	return nil
}
