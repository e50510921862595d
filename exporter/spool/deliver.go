// The reader side, the deliverer's: Next, Ack and Nack take s.mu for the
// cursor and the segment list; the read file (rf, rfPath) is the
// deliverer's alone, and read without a lock.

package spool

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// Next hands out the records after those in flight, up to about maxBytes
// of them (at least one), waiting until there are some, ctx is done or
// the spool is closed. The batch must then be acknowledged (Ack) or
// given back (Nack) before Next is called again.
func (s *Spool) Next(ctx context.Context, b *Batch, maxBytes int) error {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		if s.read != s.acked {
			s.mu.Unlock()
			return errors.New("spool: Next with a batch in flight")
		}
		for s.read >= s.next {
			if s.closed {
				s.mu.Unlock()
				return ErrClosed
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.done:
			case <-s.notify:
			}
			s.mu.Lock()
		}
		g := s.segmentOf(s.read)
		if g == nil {
			// A gap between segments, left by one that was unreadable.
			i, _ := slices.BinarySearchFunc(s.segs, s.read, func(g *segment, rsn uint64) int { return cmp.Compare(g.base, rsn) })
			s.read, s.readOff = s.segs[i].base, headerSize
			s.acked, s.ackOff = s.read, s.readOff
			s.mu.Unlock()
			continue
		}
		from, off := s.read, s.readOff
		if from == g.base {
			off = headerSize
		}
		end, endRSN, gen, path := g.size, g.end(), s.gen, g.path
		s.mu.Unlock()

		n, consumed, err := s.readRecords(b, path, off, end, endRSN-from, maxBytes)

		s.mu.Lock()
		if s.gen != gen {
			// The segment was dropped meanwhile.
			s.mu.Unlock()
			continue
		}
		switch {
		case err == nil:
		case s.closed:
			s.mu.Unlock()
			return ErrClosed
		case errors.Is(err, errCorrupt) || errors.Is(err, io.EOF):
			s.skipCorrupt(g, from, err)
			s.mu.Unlock()
			continue
		default:
			s.mu.Unlock()
			return fmt.Errorf("spool: read %s: %w", filepath.Base(path), err)
		}
		b.end, b.endOff = from+uint64(n), off+consumed
		b.Resent = int(min(b.end, max(s.sent, from)) - from)
		s.read, s.readOff = b.end, b.endOff
		s.sent = max(s.sent, b.end)
		s.saveCursor()
		s.mu.Unlock()
		return nil
	}
}

// readRecords reads up to want records from path at off, up to end, into
// b. It reads at least one record, maxBytes or not.
func (s *Spool) readRecords(b *Batch, path string, off, end int64, want uint64, maxBytes int) (n int, consumed int64, err error) {
	if s.rfPath != path {
		if s.rf != nil {
			s.rf.Close()
			s.rf = nil
		}
		f, err := os.Open(path)
		if err != nil {
			return 0, 0, err
		}
		s.rf, s.rfPath = f, path
	}
	size := min(end-off, int64(maxBytes))
	if int64(cap(b.buf)) < size {
		b.buf = make([]byte, size)
	}
	buf := b.buf[:size]
	if _, err := s.rf.ReadAt(buf, off); err != nil {
		return 0, 0, err
	}
	b.Records = b.Records[:0]
	for uint64(len(b.Records)) < want {
		r, k, err := parseRecord(buf[consumed:])
		if errors.Is(err, errShort) && len(b.Records) == 0 {
			// A record larger than maxBytes: read it whole.
			need := int64(frameSize)
			if len(buf)-int(consumed) >= frameSize {
				need += int64(binary.LittleEndian.Uint32(buf[consumed:]))
			}
			if need > end-off || need <= int64(len(buf)) {
				return 0, 0, errCorrupt
			}
			b.buf = make([]byte, need)
			buf = b.buf
			if _, err := s.rf.ReadAt(buf, off); err != nil {
				return 0, 0, err
			}
			continue
		}
		if errors.Is(err, errShort) {
			break
		}
		if err != nil {
			if len(b.Records) > 0 {
				// Hand out the good ones; the next call stops here.
				break
			}
			return 0, 0, err
		}
		b.Records = append(b.Records, r)
		consumed += int64(k)
	}
	return len(b.Records), consumed, nil
}

// skipCorrupt gives up on the rest of segment g, from record rsn on, after
// a read failed. Nothing is in flight (Next runs between batches).
func (s *Spool) skipCorrupt(g *segment, rsn uint64, err error) {
	lost := g.end() - rsn
	s.log.Error("spool segment is corrupt; skipping the rest of it", "file", filepath.Base(g.path), "records", lost, "error", err)
	s.countCorrupt(lost)
	s.acked, s.ackOff = g.end(), headerSize
	if g == s.active {
		// Appends go on after what was found corrupt; only the appender
		// touches the active segment.
		s.ackOff = g.size
	}
	s.read, s.readOff = s.acked, s.ackOff
	s.sent = max(s.sent, s.acked)
	s.gen++
	s.deleteAcked()
	s.saveCursor()
}

// Ack acknowledges b: its records are delivered and leave the spool.
func (s *Spool) Ack(b *Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.end > s.acked {
		s.acked, s.ackOff = b.end, b.endOff
	}
	s.inflightDropped = 0
	s.deleteAcked()
	s.saveCursor()
}

// Nack gives b back: its records are handed out again by the next Next.
func (s *Spool) Nack(b *Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countDropped(s.inflightDropped)
	s.inflightDropped = 0
	s.read, s.readOff = s.acked, s.ackOff
}
