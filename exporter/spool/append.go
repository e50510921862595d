// The writer side. Append holds s.wmu throughout, so that it alone
// changes the active segment and its file, and s.mu for the segment list,
// the byte count and the sequence numbers, but while write writes: delivery
// never waits for the disk. The helpers after write run under s.mu (from
// Append, Ack and Nack), or from Open's recovery before the Spool is shared.

package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Append spools recs, in order, with one write. What it keeps it copies.
// When the bound is hit it drops the oldest segments to make room; a
// record that could never fit is dropped itself. The error is that of a
// write the disk refused (its records are counted as dropped).
func (s *Spool) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	buf := s.wbuf[:0]
	buffered := 0 // records in buf
	var firstErr error
	flush := func() {
		if buffered == 0 {
			return
		}
		if err := s.write(buf, buffered); err != nil && firstErr == nil {
			firstErr = err
		}
		buf, buffered = buf[:0], 0
	}
	for i := range recs {
		r := &recs[i]
		size := int64(recordSize(r))
		if size-frameSize > maxBodyBytes || size+headerSize > s.max {
			s.countDropped(1)
			continue
		}
		if g := s.active; g != nil && (g.count > 0 || buffered > 0) && g.size+int64(len(buf))+size > s.segMax {
			flush()
			s.seal()
		}
		newSeg := int64(0)
		if s.active == nil {
			newSeg = headerSize
		}
		for s.bytes+int64(len(buf))+newSeg+size > s.max && len(s.segs) > 0 {
			flush()
			if s.segs[0] == s.active {
				// The only segment: end it, then drop it like any other.
				s.seal()
				newSeg = headerSize
				continue
			}
			s.dropOldest()
		}
		if s.active == nil {
			if err := s.create(); err != nil {
				// Nothing spooled can be delivered from a disk that
				// refuses new files: count what this call loses.
				s.countDropped(uint64(len(recs) - i))
				buf = buf[:0]
				s.wbuf = buf
				return err
			}
		}
		buf = appendRecord(buf, r)
		buffered++
	}
	flush()
	s.wbuf = buf
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return firstErr
}

// write appends buf, holding n records, to the active segment. It lets go
// of s.mu meanwhile, so that delivery never waits for the disk: only the
// appender (holding s.wmu) changes the active segment.
func (s *Spool) write(buf []byte, n int) error {
	g := s.active
	s.mu.Unlock()
	_, err := g.w.Write(buf)
	s.mu.Lock()
	if err != nil {
		// The segment may now end in part of buf: cut it back, and
		// begin a new segment in any case so that nothing is appended
		// after bytes that may be torn.
		if terr := g.w.Truncate(g.size); terr != nil {
			s.log.Warn("cut a failed spool write", "file", g.path, "error", terr)
		}
		s.seal()
		s.countDropped(uint64(n))
		return fmt.Errorf("spool: write %s: %w", filepath.Base(g.path), err)
	}
	g.size += int64(len(buf))
	g.count += uint64(n)
	s.bytes += int64(len(buf))
	s.next += uint64(n)
	return nil
}

// create begins a new segment at s.next.
func (s *Spool) create() error {
	path := filepath.Join(s.dir, fmt.Sprintf("%016x%s", s.next, segmentSuffix))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var h [headerSize]byte
	copy(h[:], magic)
	binary.LittleEndian.PutUint64(h[8:], s.next)
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("spool: %w", err)
	}
	g := &segment{base: s.next, size: headerSize, path: path, w: f}
	s.segs = append(s.segs, g)
	s.active = g
	s.bytes += headerSize
	s.dirDirty = true
	return nil
}

// seal ends appends to the active segment. Its file is closed: the syncer
// reopens it if it ever has to be synced.
func (s *Spool) seal() {
	g := s.active
	if g == nil {
		return
	}
	s.active = nil
	g.w.Close()
	g.w = nil
	if g.count == 0 {
		// Nothing to keep, nor to count.
		s.removeSegment(g)
	}
}

// dropOldest deletes the oldest segment to make room, counting the records
// that were never acknowledged.
func (s *Spool) dropOldest() {
	g := s.segs[0]
	end := g.end()
	var lost, inflight uint64
	if s.acked < end {
		from := max(g.base, s.acked)
		inflight = min(end, s.read) - min(from, s.read)
		lost = end - from - inflight
		s.acked, s.ackOff = end, headerSize
	}
	if s.read < end {
		s.read, s.readOff = end, headerSize
	}
	s.sent = max(s.sent, end)
	s.inflightDropped += inflight
	s.countDropped(lost)
	s.gen++
	s.removeSegment(g)
	if now := time.Now(); now.Sub(s.lastDropLog) >= time.Minute {
		s.lastDropLog = now
		s.log.Warn("spool full: dropped its oldest undelivered events", "events", lost+inflight,
			"max_bytes", s.max, "dropped_total", s.dropped)
	}
}

func (s *Spool) removeSegment(g *segment) {
	i := slices.Index(s.segs, g)
	s.segs = slices.Delete(s.segs, i, i+1)
	s.bytes -= g.size
	if g.w != nil {
		g.w.Close()
		g.w = nil
	}
	if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove spool segment", "file", g.path, "error", err)
	}
}

// deleteAcked removes the segments whose records are all acknowledged,
// except the one appended to.
func (s *Spool) deleteAcked() {
	for len(s.segs) > 0 && s.segs[0] != s.active && s.segs[0].end() <= s.acked {
		s.removeSegment(s.segs[0])
	}
}

func (s *Spool) countDropped(n uint64) {
	s.dropped += n
	s.droppedUntaken += n
}

func (s *Spool) countCorrupt(n uint64) {
	s.corrupt += n
	s.corruptUntaken += n
}
