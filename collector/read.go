// The read loop: the only goroutine that touches the ring buffer.

package collector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// read is the only goroutine touching the ring buffer. It wakes when the
// kernel says enough is waiting or the flush timer fires, never per event.
func (c *Collector) read() {
	defer close(c.done)
	defer close(c.out)

	var rec ringbuf.Record
	c.batch = c.pool.Get().(*Batch)
	c.hellos = newAssembler(c.push)
	bootOffset := bootTimeOffset()
	c.reader.SetDeadline(time.Now().Add(c.cfg.FlushInterval))

	for {
		err := c.reader.ReadInto(&rec)
		if err == nil {
			c.record(rec.RawSample, bootOffset)
			continue
		}

		// Closing, the reader goes on until Close's flush: programs being
		// detached may still write.
		final := false
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrFlushed):
			final = c.closing.Load()
		case errors.Is(err, os.ErrClosed):
			final = true
		default:
			// Corrupt ring state cannot be recovered from; report and stop.
			c.log.Error("ring buffer read failed; no further events", "error", err)
			final = true
		}
		// The ring is drained: hand on what we have, with any losses.
		c.held.expired(time.Now(), final, c.push)
		c.hellos.expire(time.Now(), final)
		hs := c.hellos.stats
		c.helloStats.Store(&hs)
		c.pollKernelLosses()
		if c.sweepNow.Swap(false) || time.Since(c.lastSweep) > sweepEvery {
			c.sweep()
			c.lastSweep = time.Now()
		}
		if len(c.batch.Events) > 0 || c.hasUnreported() {
			c.batch = c.send(c.batch, final)
		}
		c.ready.Store(true)
		if final {
			c.pool.Put(c.batch)
			return
		}
		bootOffset = bootTimeOffset()
		c.reader.SetDeadline(time.Now().Add(c.cfg.FlushInterval))
	}
}

// record handles one ring-buffer record, as its kind says.
func (c *Collector) record(b []byte, bootOffset int64) {
	switch kind := recordKind(b); kind {
	case connectKindKIND_CONNECT_START:
		c.start(b, bootOffset)
	case connectKindKIND_OUTCOME:
		c.outcome(b, bootOffset)
	case connectKindKIND_PLAINTEXT:
		if len(b) != headerSize {
			c.malformed(fmt.Errorf("%w: plaintext record of %d bytes", ErrMalformed, len(b)))
			return
		}
		c.firstData(binary.NativeEndian.Uint64(b[offCookie:]), true)
	case connectKindKIND_TLS_CLIENT, connectKindKIND_TLS_SERVER, connectKindKIND_DNS, connectKindKIND_EXEC:
		if err := decodePayload(b, bootOffset, &c.payload); err != nil {
			c.malformed(err)
			return
		}
		if kind == connectKindKIND_TLS_CLIENT && c.payload.offset == 0 {
			c.firstData(c.payload.head.Cookie, false)
		}
		c.hellos.add(&c.payload, time.Now())
	case connectKindKIND_CONNECT, connectKindKIND_EXIT:
		ev := c.next()
		if err := ev.Decode(b, bootOffset); err != nil {
			c.batch.Events = c.batch.Events[:len(c.batch.Events)-1]
			c.malformed(err)
			return
		}
		c.filled()
	default:
		c.malformed(fmt.Errorf("%w: kind %d", ErrMalformed, kind))
	}
}

// push adds an event made outside Decode (a tls or dns event) to the
// batch being filled.
func (c *Collector) push(ev *Event) {
	*c.next() = *ev
	c.filled()
}

// next adds a slot to the batch being filled and returns it, as it was
// left by an earlier use: the caller sets every field. The batch always
// has room, as filled hands it on once full.
func (c *Collector) next() *Event {
	b := c.batch
	b.Events = b.Events[:len(b.Events)+1]
	return &b.Events[len(b.Events)-1]
}

// filled hands the batch on once it is full.
func (c *Collector) filled() {
	if len(c.batch.Events) == cap(c.batch.Events) {
		c.batch = c.send(c.batch, false)
	}
}

// send queues a batch, led by loss events for what was lost since the last
// one got through, and returns an empty batch. When the pipeline is behind,
// the batch is dropped and counted, and its loss events wait for the next.
// The final batch waits for room: nothing new can arrive to be dropped.
func (c *Collector) send(b *Batch, wait bool) *Batch {
	n := uint64(0) // events, not process exits or DNS answers
	for i := range b.Events {
		if k := b.Events[i].Kind; k == KindConnect || k == KindTLS {
			n++
		}
	}
	if c.hasUnreported() {
		now := time.Now().UnixNano()
		for r, lost := range c.unreported {
			if lost > 0 {
				b.Events = append(b.Events, Event{Kind: KindLoss, Time: now, Lost: lost,
					LossStage: lossReasons[r].stage, LossReason: lossReasons[r].reason})
			}
		}
	}
	if wait {
		c.out <- b
	} else {
		select {
		case c.out <- b:
		default:
			b.Events = b.Events[:0]
			c.lose(lossQueue, n)
			return b
		}
	}
	c.unreported = [numLossReasons]uint64{}
	c.events.Add(n)
	return c.pool.Get().(*Batch)
}

// bootTimeOffset converts the kernel's CLOCK_BOOTTIME to Unix time. It is
// taken again at each flush, so a wall clock step is followed.
func bootTimeOffset() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Now().UnixNano() - ts.Nano()
}
