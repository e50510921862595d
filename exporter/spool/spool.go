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
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
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
