// Crash recovery, at Open: segments checked, the newest cut back after its
// last whole record, and the cursor found. Open runs it before the Spool is
// shared: it takes no lock.

package spool

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// recover rebuilds the state from the directory.
func (s *Spool) recover() error {
	var err error
	s.cursor, err = os.OpenFile(filepath.Join(s.dir, cursorName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	acked, sent, cursorOK := s.readCursor()

	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		base, ok := strings.CutSuffix(name, segmentSuffix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		n, err := strconv.ParseUint(base, 16, 64)
		if err != nil || len(base) != 16 {
			s.log.Warn("ignoring a file that is not a spool segment", "file", name)
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		s.segs = append(s.segs, &segment{base: n, size: info.Size(), synced: info.Size(), path: filepath.Join(s.dir, name)})
	}
	slices.SortFunc(s.segs, func(a, b *segment) int { return cmp.Compare(a.base, b.base) })

	// Older segments' counts follow from the next one's base; the newest
	// is read through, which is also where a torn record can only be.
	for i, g := range s.segs {
		if err := checkHeader(g); err != nil {
			s.log.Warn("spool segment unreadable; its records are lost", "file", filepath.Base(g.path), "error", err)
			switch {
			case i+1 < len(s.segs):
				s.countCorrupt(s.segs[i+1].base - g.base)
			case g.size > headerSize:
				s.countCorrupt(1) // at least
			}
			g.count, g.size = 0, 0
			continue
		}
		if i+1 < len(s.segs) {
			g.count = s.segs[i+1].base - g.base
			continue
		}
		if err := s.recoverTail(g); err != nil {
			return err
		}
	}
	// Segments with no records are left by a crash right after creation,
	// or were unreadable.
	s.segs = slices.DeleteFunc(s.segs, func(g *segment) bool {
		if g.count > 0 {
			return false
		}
		if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove spool segment", "file", g.path, "error", err)
		}
		return true
	})

	if len(s.segs) == 0 {
		// Go on numbering where the last run stopped, so that names
		// never repeat.
		if cursorOK {
			s.next = acked
		}
		s.acked, s.read, s.sent, s.lagMark = s.next, s.next, s.next, s.next
		return s.writeCursor()
	}
	first, last := s.segs[0], s.segs[len(s.segs)-1]
	s.next = last.end()
	if !cursorOK {
		acked = first.base
		sent = s.next // unknown: treat every record as maybe sent
	}
	acked = min(max(acked, first.base), s.next)
	sent = min(max(sent, acked), s.next)
	for _, g := range s.segs {
		s.bytes += g.size
	}
	s.acked, s.sent = acked, sent
	s.deleteAcked()
	if err := s.seekAcked(); err != nil {
		return err
	}
	s.read, s.readOff = s.acked, s.ackOff
	s.lagMark = s.next
	if n := s.next - s.acked; n > 0 {
		s.log.Info("spool holds records from a previous run; delivering them first", "records", n, "bytes", s.bytes)
	}
	return s.writeCursor()
}

func checkHeader(g *segment) error {
	f, err := os.Open(g.path)
	if err != nil {
		return err
	}
	defer f.Close()
	var h [headerSize]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if string(h[:8]) != magic {
		return errors.New("bad magic")
	}
	if binary.LittleEndian.Uint64(h[8:]) != g.base {
		return errors.New("header does not match the file name")
	}
	return nil
}

// recoverTail counts the records of the newest segment and cuts off a torn
// last record.
func (s *Spool) recoverTail(g *segment) error {
	data, err := os.ReadFile(g.path)
	if err != nil {
		return err
	}
	off := int64(headerSize)
	for {
		_, n, err := parseRecord(data[off:])
		if err != nil {
			break
		}
		off += int64(n)
		g.count++
	}
	if off == int64(len(data)) {
		return nil
	}
	s.log.Warn("spool ends in a torn record, left by a crash mid-write; dropping it",
		"file", filepath.Base(g.path), "bytes", int64(len(data))-off)
	s.countCorrupt(1)
	if err := os.Truncate(g.path, off); err != nil {
		return fmt.Errorf("cut torn record: %w", err)
	}
	g.size, g.synced = off, off
	return nil
}

// seekAcked finds the offset of the first unacknowledged record. Only a
// record inside its segment needs one: a segment's first record sits
// right after the header.
func (s *Spool) seekAcked() error {
	g := s.segmentOf(s.acked)
	if g == nil || g.base == s.acked {
		s.ackOff = headerSize
		return nil
	}
	f, err := os.Open(g.path)
	if err != nil {
		return err
	}
	defer f.Close()
	off := int64(headerSize)
	var frame [frameSize]byte
	for rsn := g.base; rsn < s.acked; rsn++ {
		if _, err := f.ReadAt(frame[:], off); err != nil {
			// Cannot skip reliably: send the segment again from its start.
			s.acked, s.ackOff = g.base, headerSize
			return nil
		}
		off += frameSize + int64(binary.LittleEndian.Uint32(frame[:4]))
	}
	s.ackOff = off
	return nil
}

// segmentOf returns the segment holding rsn, or nil.
func (s *Spool) segmentOf(rsn uint64) *segment {
	i, _ := slices.BinarySearchFunc(s.segs, rsn, func(g *segment, rsn uint64) int {
		switch {
		case g.end() <= rsn:
			return -1
		case g.base > rsn:
			return 1
		}
		return 0
	})
	if i < len(s.segs) && s.segs[i].base <= rsn && rsn < s.segs[i].end() {
		return s.segs[i]
	}
	return nil
}
