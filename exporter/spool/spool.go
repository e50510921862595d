// Package spool is a bounded on-disk FIFO of records waiting for delivery:
// a write-ahead log that records enter before they are sent anywhere and
// leave only once their delivery is acknowledged, so that they survive an
// outage of the receiver and a restart or crash of the process.
//
// # Format
//
// The spool is a directory of segment files named after the sequence
// number of their first record (%016x.seg), and a cursor file. A segment
// starts with a 16-byte header: the magic "CSSPOOL1" and the first
// sequence number, little-endian. Records follow, back to back:
//
//	u32 length of body | u32 CRC-32C of the length's 4 bytes and the body | body
//	body: u8 flags | uvarint time (Unix ms) | uvarint key length | key | value
//
// All integers are little-endian. Sequence numbers are implicit: a record's
// number is its segment's first number plus its index in the segment, so
// a record costs 8 bytes of framing and about 8 of flags, time and key
// length besides its key and value.
//
// The cursor file holds two sequence numbers and their CRC-32C: the first
// record not yet acknowledged, and the first record never handed out for
// delivery. Records between the two may have been delivered already when
// the process stopped; they are sent again, and counted as such (see
// Batch.Resent).
//
// # Crash recovery
//
// Only the newest segment can end in a record torn by a crash (its length,
// checksum or body cut short, or written in part): Open reads it through,
// truncates it after its last whole record and counts the torn one as
// corrupt. Older segments are checked as they are read: a record that
// fails its checksum there is counted corrupt with the rest of its segment,
// as a corrupt length leaves nothing to find the next record by.
//
// # Bound
//
// The segments never hold more than MaxBytes together. When an append
// would cross it, the oldest segment is deleted and its records that were
// not acknowledged yet are counted as dropped (TakeLosses). Dropping the
// oldest rather than refusing the newest keeps what a consumer most likely
// needs after an outage, the present, and costs one unlink however many
// records go; the stream's loss event and its gap in seq tell consumers
// what went. Records handed out for delivery when their segment is
// dropped are counted as dropped only if that delivery then fails.
//
// # Durability
//
// Appends are written to the segment file (the page cache) at once, with
// one write per Append (two when it begins a segment), so they survive
// the process being killed. They are fsynced, with the directory and the
// cursor, only while delivery lags: at every SyncInterval (1s) tick when
// records appended before the previous tick are still unacknowledged, and
// on Close when records are left. When delivery keeps up, records are
// acknowledged and their segments deleted before the kernel would write
// them back, so the spool costs no disk I/O at all. A power loss or a
// kernel crash, unlike a crash of the process, can thus lose the
// undelivered records of the last one or two seconds. Fsyncing every
// append would tie the event pipeline to the disk's flush latency, and
// write every event to disk, for little gain: a node that loses power
// loses its workloads' connections too.
package spool

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	magic         = "CSSPOOL1"
	headerSize    = 16
	frameSize     = 8 // length and CRC
	segmentSuffix = ".seg"
	cursorName    = "cursor"
	lockName      = "lock"
	cursorSize    = 20

	// maxBodyBytes bounds a record so that a corrupt length cannot make a
	// reader allocate without limit.
	maxBodyBytes = 16 << 20

	defaultSyncInterval = time.Second
	minSegmentBytes     = 4 << 10
	maxSegmentBytes     = 4 << 20
)

// FlagViolation marks a record that is also a violation.
const FlagViolation = 1 << 0

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrClosed is returned by a closed Spool.
var ErrClosed = errors.New("spool closed")

// Record is one spooled message.
type Record struct {
	Flags uint8
	Time  int64 // Unix milliseconds
	Key   []byte
	Value []byte
}

// Options tune a Spool.
type Options struct {
	// MaxBytes bounds the segment files together. Required.
	MaxBytes int64
	// SegmentBytes is the size past which a segment is closed and a new
	// one begun; it is also what the bound drops at a time. Default:
	// MaxBytes/8, within 4KiB and 4MiB.
	SegmentBytes int64
	// SyncInterval is how often lagging records are fsynced. Default 1s.
	SyncInterval time.Duration
	Logger       *slog.Logger
}

// Stats are the spool's counters.
type Stats struct {
	Bytes   int64  // in segment files
	Records uint64 // not acknowledged yet
	Dropped uint64 // dropped because the bound was hit, since Open
	Corrupt uint64 // found torn or corrupt, since Open
}

// Batch is a run of records handed out by Next for delivery. Its Records
// point into a buffer the Batch owns and reuses on the next call to Next.
type Batch struct {
	Records []Record
	// Resent counts the records of the batch that were handed out before,
	// by this process or one before it, so may have been delivered already.
	Resent int

	end    uint64
	endOff int64
	buf    []byte
}

type segment struct {
	base   uint64 // sequence number of the first record
	count  uint64 // records
	size   int64  // bytes written, header included
	synced int64  // bytes known to be on stable storage
	path   string
	w      *os.File // open for appends: the newest segment only
}

func (g *segment) end() uint64 { return g.base + g.count }

// Spool is safe for one appender and one deliverer at a time: Append may
// run concurrently with Next, Ack and Nack, which must be called in turn
// (one batch in flight).
type Spool struct {
	dir        string
	max        int64
	segMax     int64
	log        *slog.Logger
	lock       *os.File
	cursor     *os.File
	notify     chan struct{} // Append → Next
	done       chan struct{} // closed by Close
	syncerDone chan struct{}

	wmu    sync.Mutex // held by Append throughout, and by Close
	mu     sync.Mutex
	closed bool
	segs   []*segment // oldest first; the last is the one appended to, if active
	active *segment
	bytes  int64
	next   uint64 // sequence number of the next record appended
	// acked is the first record not acknowledged (nor dropped), read the
	// first not handed out. Their offsets are where they are in their
	// segment, or will be: they matter only for a record that is not its
	// segment's first, which is always right after the header.
	acked   uint64
	ackOff  int64
	read    uint64
	readOff int64
	sent    uint64 // first record never handed out, in any run
	gen     uint64 // bumped whenever records leave other than by Ack
	// inflightDropped counts records of the batch in flight whose
	// segment was dropped: lost if the batch fails, delivered if not.
	inflightDropped uint64
	lagMark         uint64
	dirDirty        bool

	dropped, corrupt               uint64 // since Open
	droppedUntaken, corruptUntaken uint64
	lastDropLog                    time.Time

	wbuf []byte // Append's encoding buffer

	// reader side, owned by the deliverer
	rf     *os.File
	rfPath string
}

// Open opens the spool in dir, creating dir if needed, and recovers what a
// previous process left there. The directory is locked for the life of the
// Spool: two processes sharing it would corrupt it.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		return nil, errors.New("spool: MaxBytes must be positive")
	}
	segMax := opts.SegmentBytes
	if segMax <= 0 {
		segMax = min(max(opts.MaxBytes/8, minSegmentBytes), maxSegmentBytes)
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = defaultSyncInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("spool: %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("spool: lock %s: %w", dir, err)
	}
	s := &Spool{
		dir:        dir,
		max:        opts.MaxBytes,
		segMax:     segMax,
		log:        log,
		lock:       lock,
		notify:     make(chan struct{}, 1),
		done:       make(chan struct{}),
		syncerDone: make(chan struct{}),
	}
	if err := s.recover(); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("spool: recover %s: %w", dir, err)
	}
	go s.syncer(opts.SyncInterval)
	return s, nil
}

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

// Len returns the number of records not acknowledged yet.
func (s *Spool) Len() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next - s.acked
}

// Stats returns the spool's counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Bytes: s.bytes, Records: s.next - s.acked, Dropped: s.dropped, Corrupt: s.corrupt}
}

// TakeLosses returns the records lost since the last call: dropped
// because the bound was hit, and found torn or corrupt.
func (s *Spool) TakeLosses() (dropped, corrupt uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped, corrupt = s.droppedUntaken, s.corruptUntaken
	s.droppedUntaken, s.corruptUntaken = 0, 0
	return dropped, corrupt
}

// syncer fsyncs the segments while delivery lags (see the package doc).
func (s *Spool) syncer(every time.Duration) {
	defer close(s.syncerDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		lagging := s.acked < s.lagMark
		s.lagMark = s.next
		s.mu.Unlock()
		if lagging {
			s.sync()
		}
	}
}

// sync makes the segments, their directory entries and the cursor durable.
func (s *Spool) sync() {
	type job struct {
		g    *segment
		f    *os.File
		size int64
	}
	var jobs []job
	s.mu.Lock()
	for _, g := range s.segs {
		if g.synced < g.size && g.end() > s.acked {
			jobs = append(jobs, job{g, g.w, g.size})
		}
	}
	dirDirty := s.dirDirty
	s.dirDirty = false
	s.mu.Unlock()

	for _, j := range jobs {
		var err error
		if j.f != nil {
			// Sync, not the raw fd: Append may close the file meanwhile.
			err = j.f.Sync()
		} else {
			err = syncPath(j.g.path)
		}
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrClosed) {
				s.log.Warn("fsync spool segment", "file", filepath.Base(j.g.path), "error", err)
			}
			continue
		}
		s.mu.Lock()
		j.g.synced = max(j.g.synced, j.size)
		s.mu.Unlock()
	}
	if dirDirty {
		if err := syncPath(s.dir); err != nil {
			s.log.Warn("fsync spool directory", "error", err)
		}
	}
	if err := s.cursor.Sync(); err != nil {
		s.log.Warn("fsync spool cursor", "error", err)
	}
}

// syncPath fsyncs a file by name: fsync flushes the file, not the
// descriptor, so a new one does.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Close syncs what is left for the next run and closes the spool. A Next
// waiting returns ErrClosed; the deliverer must be done with Next, Ack and
// Nack before Close goes on to close the files they read.
func (s *Spool) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	left := s.next - s.acked
	s.mu.Unlock()
	<-s.syncerDone
	if left > 0 {
		s.sync()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seal()
	err := s.writeCursor()
	s.closeFiles()
	return err
}

func (s *Spool) closeFiles() {
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
	if s.cursor != nil {
		s.cursor.Close()
	}
	s.lock.Close() // releases the flock
}
