// The cursor file: the first record not acknowledged and the first never
// handed out. Its callers hold s.mu, but for Open's recovery, which runs
// before the Spool is shared.

package spool

import (
	"encoding/binary"
	"hash/crc32"
)

func (s *Spool) readCursor() (acked, sent uint64, ok bool) {
	var b [cursorSize]byte
	if n, _ := s.cursor.ReadAt(b[:], 0); n < cursorSize {
		return 0, 0, false
	}
	if crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		s.log.Warn("spool cursor is corrupt; records kept are sent again from the oldest")
		return 0, 0, false
	}
	return binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:]), true
}

// writeCursor records acked and sent. It is not fsynced: a cursor that
// lags or is lost only makes records go again, never go missing.
func (s *Spool) writeCursor() error {
	var b [cursorSize]byte
	binary.LittleEndian.PutUint64(b[:8], s.acked)
	binary.LittleEndian.PutUint64(b[8:], s.sent)
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	_, err := s.cursor.WriteAt(b[:], 0)
	return err
}

// saveCursor is writeCursor where a failure only costs records going
// again: it is logged, not returned.
func (s *Spool) saveCursor() {
	if err := s.writeCursor(); err != nil {
		s.log.Warn("write spool cursor", "error", err)
	}
}
