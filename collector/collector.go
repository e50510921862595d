// Package collector loads callscope's BPF programs, attaches them to the
// cgroup2 root and the connect tracepoint, reads their ring buffer and hands
// decoded events on in batches.
package collector

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Config tunes the collector. The zero value of each field picks a default.
type Config struct {
	// CgroupRoot is the cgroup2 directory the programs attach to; every
	// process below it is seen. Default: the cgroup2 mount.
	CgroupRoot string
	// RingBufferBytes is the size of the kernel ring buffer, a power of two
	// and a multiple of the page size. Default 4 MiB: about 25,000 connects,
	// each a start and an outcome record (168 bytes with their headers).
	RingBufferBytes int
	// MaxInFlight is how many connects awaiting their outcome are
	// tracked; beyond it new ones are counted as lost. It also sizes the
	// kernel's map of ClientHellos being read. Default 32768.
	MaxInFlight int
	// ConnExpiry is how long a connect may await its outcome before it is
	// forgotten and counted as lost (conn_expired). Default 10 minutes:
	// the kernel gives up on a SYN after about 2 minutes by default, and a
	// start whose outcome record the ring buffer had no room for must not
	// hold its room for long.
	ConnExpiry time.Duration
	// WakeupBytes wakes the reader early once this much is waiting.
	// Default a quarter of the ring.
	WakeupBytes int
	// FlushInterval bounds how long an event waits in the ring buffer
	// before it is read. Default 50ms.
	FlushInterval time.Duration
	// BatchSize is the most events handed on at once. Default 256.
	BatchSize int
	// QueueBatches is how many batches may wait for the pipeline before
	// new ones are dropped and counted. Default 64.
	QueueBatches int
	// BPFStats has the kernel count each program's runs and run time, for
	// Programs. It costs two clock reads per program run.
	BPFStats bool
	// SyscallErrors gives connects that fail inside connect(2), before a
	// SYN is sent, the syscall's error. The kernel keeps it nowhere else:
	// it takes the syscall-exit tracepoint, and while any syscall
	// tracepoint is attached every syscall on the node takes the kernel's
	// slower path. Without it such connects are still reported, when
	// their socket is released, as failed without an error.
	SyscallErrors bool
	// TLSPorts are the ports where TLS is expected: an established
	// connect to one waits (up to a second) for its first data, and
	// carries Plaintext when that was no TLS handshake. nil means
	// DefaultTLSPorts; empty, none.
	TLSPorts []uint16
	// Logger is where the collector logs; nil logs nothing.
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.CgroupRoot == "" {
		root, err := Cgroup2Mount()
		if err != nil {
			return err
		}
		c.CgroupRoot = root
	}
	if c.RingBufferBytes == 0 {
		c.RingBufferBytes = 4 << 20
	}
	page := os.Getpagesize()
	if n := c.RingBufferBytes; n < page || n&(n-1) != 0 {
		return fmt.Errorf("ring buffer size %d: must be a power of two of at least %d", n, page)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 32768
	}
	if c.ConnExpiry == 0 {
		c.ConnExpiry = 10 * time.Minute
	}
	if c.WakeupBytes == 0 {
		c.WakeupBytes = c.RingBufferBytes / 4
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.BatchSize == 0 {
		c.BatchSize = 256
	}
	if c.QueueBatches == 0 {
		c.QueueBatches = 64
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TLSPorts == nil {
		c.TLSPorts = DefaultTLSPorts
	}
	return nil
}

// Batch is a group of events handed on together. Give it back with
// Collector.Release once done, so its memory is reused.
type Batch struct {
	Events []Event
}

// Collector owns the loaded programs, their links and the reader.
type Collector struct {
	cfg      Config
	log      *slog.Logger
	objs     connectObjects
	caps     kernelCaps
	features []Feature
	links    []link.Link
	stats    io.Closer // BPF stats switched on, when asked
	// objsMu keeps Programs, called from the metrics server, off objects
	// that Close frees.
	objsMu   sync.RWMutex
	released bool
	reader   *ringbuf.Reader
	out      chan *Batch
	pool     sync.Pool
	done     chan struct{}

	closing atomic.Bool
	ready   atomic.Bool
	events  atomic.Uint64
	lost    [numLossReasons]atomic.Uint64 // cumulative, for metrics
	// notices lost: the kernel slots that count process exits and execs it
	// could not report, which lose no event.
	noticesLost [connectStatSTAT_MAX]atomic.Uint64

	// Owned by the read goroutine.
	kernelSeen [connectStatSTAT_MAX]uint64 // last sums read from the stats map
	unreported [numLossReasons]uint64      // losses not yet carried by a loss event
	percpu     []uint64
	lastSweep  time.Time
	inflight   inflight // connects awaiting their outcome
	// orphans counts starts in inflight whose outcome the kernel lost and
	// counted: the sweep lets that many expire without counting them again.
	orphans      uint64
	outcomesLost atomic.Uint64
	tlsPorts     *portSet
	held         held // established connects to TLS ports, awaiting their first data
	heldFull     atomic.Uint64
	hellos       *assembler
	batch        *Batch // being filled
	payload      payload
	helloStats   atomic.Pointer[HelloStats] // a copy for Stats, taken at each flush

	sweepNow  atomic.Bool // asks the read goroutine to sweep at its next pass
	closeOnce sync.Once
	closeErr  error
}

// Start loads and attaches the programs and starts reading. Call Close to
// detach everything.
func Start(cfg Config) (*Collector, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := CheckSystem(cfg.CgroupRoot); err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	if p, err := ensureTracefs(); err != nil {
		return nil, err
	} else if p != "" {
		cfg.Logger.Info("mounted tracefs", "component", "collector", "path", p)
	}

	c := &Collector{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "collector"),
		out:  make(chan *Batch, cfg.QueueBatches),
		done: make(chan struct{}),
	}
	c.pool.New = func() any { return &Batch{Events: make([]Event, 0, cfg.BatchSize)} }

	caps, err := probeCaps()
	if err != nil {
		return nil, err
	}
	c.caps, c.features = caps, caps.features(cfg.SyscallErrors)
	for _, f := range c.features {
		// An opt-in feature not asked for is not missing.
		if !f.Available && (f.Name != FeatureUnsentErrors || cfg.SyscallErrors) {
			c.log.Warn("kernel feature off: not reported", "feature", f.Name, "needs", f.Needs, "not_reported", f.Without)
		}
	}

	if err := c.load(); err != nil {
		return nil, err
	}
	if cfg.BPFStats {
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			// Metrics lose the programs' run time; capture goes on.
			c.log.Warn("kernel program statistics unavailable", "error", err)
		} else {
			c.stats = st
		}
	}
	if err := c.attach(); err != nil {
		c.release()
		return nil, err
	}
	rd, err := ringbuf.NewReader(c.objs.Events)
	if err != nil {
		c.release()
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	c.reader = rd
	go c.read()
	return c, nil
}

// Batches delivers decoded events. It is closed after Close has drained
// the ring buffer.
func (c *Collector) Batches() <-chan *Batch { return c.out }

// Release gives a batch's memory back for reuse.
func (c *Collector) Release(b *Batch) {
	b.Events = b.Events[:0]
	c.pool.Put(b)
}

// Ready reports whether the programs are attached and the reader has
// completed a pass over the ring buffer.
func (c *Collector) Ready() bool { return c.ready.Load() && !c.closing.Load() }

// Close detaches the programs, hands on what is still in the ring buffer,
// closes Batches and frees every kernel object. The last batch waits for
// the consumer, so keep reading Batches until it is closed. It is safe to
// call twice.
func (c *Collector) Close() error {
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		var errs []error
		// Detach first: nothing new arrives, and what is in flight is read.
		for _, l := range c.links {
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach: %w", err))
			}
		}
		c.links = nil
		if err := c.reader.Flush(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("flush ring buffer: %w", err))
		}
		<-c.done
		c.release()
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (c *Collector) release() {
	for _, l := range c.links {
		l.Close()
	}
	c.links = nil
	if c.stats != nil {
		c.stats.Close()
		c.stats = nil
	}
	if c.reader != nil {
		c.reader.Close()
	}
	c.objsMu.Lock()
	c.released = true
	c.objs.Close()
	c.objsMu.Unlock()
}
