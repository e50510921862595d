// The record format: framing, checksum and body of one record (see the
// package doc). Pure functions: no lock.

package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// recordSize is the size of r on disk.
func recordSize(r *Record) int {
	return frameSize + 1 + uvarintLen(uint64(r.Time)) + uvarintLen(uint64(len(r.Key))) + len(r.Key) + len(r.Value)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func appendRecord(dst []byte, r *Record) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, r.Flags)
	dst = binary.AppendUvarint(dst, uint64(r.Time))
	dst = binary.AppendUvarint(dst, uint64(len(r.Key)))
	dst = append(dst, r.Key...)
	dst = append(dst, r.Value...)
	frame := dst[start:]
	binary.LittleEndian.PutUint32(frame, uint32(len(frame)-frameSize))
	crc := crc32.Update(0, castagnoli, frame[:4])
	crc = crc32.Update(crc, castagnoli, frame[frameSize:])
	binary.LittleEndian.PutUint32(frame[4:], crc)
	return dst
}

var (
	errShort   = errors.New("short record")
	errCorrupt = errors.New("record fails its checksum")
)

// parseRecord parses the record at the start of b. The record's slices
// point into b.
func parseRecord(b []byte) (Record, int, error) {
	if len(b) < frameSize {
		return Record{}, 0, errShort
	}
	n := binary.LittleEndian.Uint32(b)
	if n > maxBodyBytes {
		return Record{}, 0, errCorrupt
	}
	if uint64(len(b)) < frameSize+uint64(n) {
		return Record{}, 0, errShort
	}
	body := b[frameSize : frameSize+n]
	crc := crc32.Update(0, castagnoli, b[:4])
	if crc32.Update(crc, castagnoli, body) != binary.LittleEndian.Uint32(b[4:]) {
		return Record{}, 0, errCorrupt
	}
	var r Record
	if len(body) < 1 {
		return r, 0, errCorrupt
	}
	r.Flags = body[0]
	t, k := binary.Uvarint(body[1:])
	if k <= 0 {
		return r, 0, errCorrupt
	}
	r.Time = int64(t)
	rest := body[1+k:]
	klen, k := binary.Uvarint(rest)
	if k <= 0 || klen > uint64(len(rest)-k) {
		return r, 0, errCorrupt
	}
	rest = rest[k:]
	if klen > 0 {
		r.Key = rest[:klen:klen]
	}
	r.Value = rest[klen:len(rest):len(rest)]
	return r, frameSize + int(n), nil
}
