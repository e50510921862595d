// Package collector loads callscope's BPF programs, attaches them to the
// cgroup2 root and the connect tracepoint, reads their ring buffer and hands
// decoded events on in batches.
package collector

import (
	"encoding/binary"
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

	"github.com/callscope/callscope/internal/cookieindex"
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
	Logger   *slog.Logger
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
		c.Logger = slog.Default()
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

// Stats counts what the collector saw and lost since it started.
type Stats struct {
	Events uint64 // decoded and queued
	Lost   []Loss // one entry per stage and reason, zeros included
	// ExitsLost counts process exits the kernel could not report: no event
	// is lost, but the process's cache entry ages out instead of going.
	ExitsLost uint64
	// ExecsLost counts execve calls the kernel could not report: a process
	// that is gone before /proc is read then has no exe.
	ExecsLost uint64
	// OutcomesLost counts, of the ring_buffer_full losses, the connects
	// whose start was read but whose outcome the ring had no room for.
	OutcomesLost uint64
	// PlaintextLost counts first data to a TLS port that was no TLS
	// handshake, which the kernel could not report: its connect goes
	// without Plaintext.
	PlaintextLost uint64
	// HeldFull counts established connects to TLS ports that went
	// without waiting for their first data, too many waiting already.
	HeldFull uint64
	Hellos   HelloStats
}

// Loss counts events lost at one stage for one reason.
type Loss struct {
	Stage, Reason string
	Count         uint64
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

func (c *Collector) load() error {
	spec, err := loadConnect()
	if err != nil {
		return fmt.Errorf("load BPF object: %w", err)
	}
	spec.Maps["events"].MaxEntries = uint32(c.cfg.RingBufferBytes)
	spec.Maps["hellos"].MaxEntries = uint32(c.cfg.MaxInFlight)
	if c.caps.taskStorage {
		spec.Maps["thread_pendings"].MaxEntries = 1 // not used
	}
	for name, on := range map[string]bool{
		"connect_hook":    c.caps.connectHook,
		"task_storage":    c.caps.taskStorage,
		"release_hook":    c.caps.releaseHook,
		"sockops_current": c.caps.sockopsCurrent,
		"syscall_errors":  c.caps.releaseHook && c.cfg.SyscallErrors,
		"udp_netns_hook":  c.caps.udpNetns,
	} {
		if err := spec.Variables[name].Set(on); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := spec.Variables["wakeup_bytes"].Set(uint64(c.cfg.WakeupBytes)); err != nil {
		return fmt.Errorf("set wakeup threshold: %w", err)
	}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load BPF programs: %+v", ve)
		}
		return fmt.Errorf("load BPF programs: %w", err)
	}
	c.tlsPorts = newPortSet(c.cfg.TLSPorts)
	for i, bits := range c.tlsPorts {
		if bits == 0 {
			continue
		}
		if err := c.objs.TlsPorts.Update(uint32(i), bits, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("set TLS ports: %w", err)
		}
	}
	return nil
}

func (c *Collector) attach() error {
	type cgroupProg struct {
		name string
		typ  ebpf.AttachType
		prog *ebpf.Program
	}
	type tracepoint struct {
		group, name string
		prog        *ebpf.Program
	}
	// The connect hooks go first, so that sock_ops finds their record on
	// every socket connected once it is attached.
	var progs []cgroupProg
	if c.caps.connectHook {
		// connect4 and connect6 arm each thread's record of the caller,
		// for TCP_CONNECT, which sock_release reports if no SYN went
		// out.
		progs = append(progs,
			cgroupProg{"connect4", ebpf.AttachCGroupInet4Connect, c.objs.Connect4},
			cgroupProg{"connect6", ebpf.AttachCGroupInet6Connect, c.objs.Connect6})
	}
	if c.caps.releaseHook {
		progs = append(progs, cgroupProg{"sock_release", ebpf.AttachCgroupInetSockRelease, c.objs.SockRelease})
	}
	if c.caps.udpNetns {
		// Before ingress, so that a resolver's socket made once it runs
		// has its namespace kept.
		progs = append(progs, cgroupProg{"sock_create", ebpf.AttachCGroupInetSockCreate, c.objs.SockCreate})
	}
	progs = append(progs,
		cgroupProg{"sock_ops", ebpf.AttachCGroupSockOps, c.objs.SockOps},
		cgroupProg{"egress", ebpf.AttachCGroupInetEgress, c.objs.Egress},
		cgroupProg{"ingress", ebpf.AttachCGroupInetIngress, c.objs.Ingress})
	tracepoints := []tracepoint{
		{"sched", "sched_process_exit", c.objs.ProcessExit},
		{"sched", "sched_process_exec", c.objs.ProcessExec},
	}
	if c.caps.releaseHook && c.cfg.SyscallErrors {
		tracepoints = append(tracepoints, tracepoint{"syscalls", "sys_exit_connect", c.objs.ConnectExit})
	}
	for _, a := range progs {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: c.cfg.CgroupRoot, Attach: a.typ, Program: a.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", a.name, c.cfg.CgroupRoot, err)
		}
		c.links = append(c.links, l)
	}
	for _, tp := range tracepoints {
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s/%s: %w", tp.group, tp.name, err)
		}
		c.links = append(c.links, l)
	}
	return nil
}

// ProgramStats is what the kernel counted of one program.
type ProgramStats struct {
	Name    string
	Runs    uint64
	RunTime time.Duration
}

// Programs returns the kernel's counts of each program's runs and run
// time: zeros unless Config.BPFStats is set (or the kernel.bpf_stats_enabled
// sysctl is on).
func (c *Collector) Programs() []ProgramStats {
	c.objsMu.RLock()
	defer c.objsMu.RUnlock()
	if c.released {
		return nil
	}
	var out []ProgramStats
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"connect4", c.objs.Connect4}, {"connect6", c.objs.Connect6}, {"sock_release", c.objs.SockRelease}, {"sock_create", c.objs.SockCreate}, {"sock_ops", c.objs.SockOps},
		{"egress", c.objs.Egress}, {"ingress", c.objs.Ingress},
		{"connect_exit", c.objs.ConnectExit}, {"process_exit", c.objs.ProcessExit}, {"process_exec", c.objs.ProcessExec},
	} {
		if p.prog == nil {
			continue
		}
		st, err := p.prog.Stats()
		if err != nil {
			continue
		}
		out = append(out, ProgramStats{Name: p.name, Runs: st.RunCount, RunTime: st.Runtime})
	}
	return out
}

// Features returns what the kernel let the programs do.
func (c *Collector) Features() []Feature { return c.features }

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

// Stats returns the counts so far.
func (c *Collector) Stats() Stats {
	s := Stats{Events: c.events.Load(), Lost: make([]Loss, numLossReasons)}
	for i, r := range lossReasons {
		s.Lost[i] = Loss{Stage: r.stage, Reason: r.reason, Count: c.lost[i].Load()}
	}
	s.ExitsLost = c.noticesLost[connectStatSTAT_EXIT_LOST].Load()
	s.ExecsLost = c.noticesLost[connectStatSTAT_EXEC_LOST].Load()
	s.OutcomesLost = c.outcomesLost.Load()
	s.PlaintextLost = c.noticesLost[connectStatSTAT_PLAINTEXT_LOST].Load()
	s.HeldFull = c.heldFull.Load()
	if h := c.helloStats.Load(); h != nil {
		s.Hellos = *h
	}
	return s
}

type lossReason int

const (
	lossRingBuffer lossReason = iota
	lossConnFull
	lossConnExpired
	lossPending
	lossQueue
	lossMalformed
	numLossReasons
)

var lossReasons = [numLossReasons]struct{ stage, reason string }{
	lossRingBuffer:  {StageKernel, ReasonRingBufferFull},
	lossConnFull:    {StageKernel, ReasonConnFull},
	lossConnExpired: {StageKernel, ReasonConnExpired},
	lossPending:     {StageKernel, ReasonPendingFull},
	lossQueue:       {StageQueue, ReasonQueueFull},
	lossMalformed:   {StageQueue, ReasonMalformed},
}

// The kernel's stats map slots and the loss reasons they feed; noLoss
// marks a slot that counts no event, kept in noticesLost instead.
var kernelLoss = [connectStatSTAT_MAX]lossReason{
	connectStatSTAT_RINGBUF_FULL:   lossRingBuffer,
	connectStatSTAT_PENDING_FULL:   lossPending,
	connectStatSTAT_EXIT_LOST:      noLoss,
	connectStatSTAT_PAYLOAD_LOST:   lossRingBuffer,
	connectStatSTAT_EXEC_LOST:      noLoss,
	connectStatSTAT_OUTCOME_LOST:   lossRingBuffer,
	connectStatSTAT_PLAINTEXT_LOST: noLoss,
}

const noLoss lossReason = -1

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

// malformed drops a record that did not decode, and counts it.
func (c *Collector) malformed(err error) {
	c.lose(lossMalformed, 1)
	c.log.Warn("dropping malformed ring buffer record", "error", err)
}

func (c *Collector) lose(r lossReason, n uint64) {
	c.lost[r].Add(n)
	c.unreported[r] += n
}

func (c *Collector) hasUnreported() bool {
	for _, n := range c.unreported {
		if n > 0 {
			return true
		}
	}
	return false
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

// pollKernelLosses adds what the kernel's loss counters grew by.
func (c *Collector) pollKernelLosses() {
	for i := range connectStatSTAT_MAX {
		key := uint32(i)
		if err := c.objs.Stats.Lookup(&key, &c.percpu); err != nil {
			c.log.Warn("read kernel loss counters", "error", err)
			return
		}
		var sum uint64
		for _, v := range c.percpu {
			sum += v
		}
		if sum > c.kernelSeen[i] {
			n := sum - c.kernelSeen[i]
			if r := kernelLoss[i]; r == noLoss {
				c.noticesLost[i].Add(n)
			} else {
				c.lose(r, n)
			}
			if i == connectStatSTAT_OUTCOME_LOST {
				c.orphans += n
				c.outcomesLost.Add(n)
			}
			c.kernelSeen[i] = sum
		}
	}
}

const sweepEvery = 30 * time.Second

// inflight holds connects awaiting their outcome: an index by cookie into
// slots that are reused, last freed first. The index's entries stay small
// (a cookie and a slot number), so that looking one up touches little
// memory however many connects wait, and nothing is allocated once the
// slots have grown to the most that waited at once.
type inflight struct {
	index cookieindex.Index
	slots []started
	free  []int32
}

func (f *inflight) len() int { return f.index.Len() }

// put keeps st for cookie, in place of what an earlier connect of the same
// socket left; it reports false when cookie is new and max are held.
func (f *inflight) put(cookie uint64, st *started, max int) bool {
	if f.index.Len() >= max {
		i, ok := f.index.Get(cookie)
		if ok {
			f.slots[i] = *st
		}
		return ok
	}
	v, found := f.index.Upsert(cookie)
	if !found {
		if n := len(f.free); n > 0 {
			*v, f.free = f.free[n-1], f.free[:n-1]
		} else {
			*v = int32(len(f.slots))
			f.slots = append(f.slots, started{})
		}
	}
	f.slots[*v] = *st
	return true
}

// take removes and returns what was kept for cookie.
func (f *inflight) take(cookie uint64) (started, bool) {
	i, ok := f.index.Delete(cookie)
	if !ok {
		return started{}, false
	}
	f.free = append(f.free, i)
	return f.slots[i], true
}

// start keeps a connect's start record until its outcome comes.
func (c *Collector) start(b []byte, bootOffset int64) {
	cookie, st, err := decodeStart(b, bootOffset)
	if err != nil {
		c.malformed(err)
		return
	}
	if !c.inflight.put(cookie, &st, c.cfg.MaxInFlight) {
		c.lose(lossConnFull, 1)
	}
}

// outcome completes the connect an outcome record belongs to and hands it
// on. An outcome without its start is of a connect that began before the
// programs were attached, or whose start was lost and counted: it is
// dropped.
func (c *Collector) outcome(b []byte, bootOffset int64) {
	o, err := decodeOutcome(b)
	if err != nil {
		c.malformed(err)
		return
	}
	st, ok := c.inflight.take(o.cookie)
	if !ok {
		return
	}
	ev := Event{
		Kind: KindConnect, Outcome: o.outcome, Errno: o.errno,
		Time: o.ts + bootOffset, Cookie: o.cookie, Src: st.src, Dst: st.dst,
	}
	st.caller.applyTo(&ev)
	if o.outcome == OutcomeEstablished {
		c.hellos.connected(o.cookie, &st.caller)
		if c.tlsPorts.has(st.dst.Port()) {
			if c.held.hold(&ev, time.Now().Add(firstDataWait)) {
				return
			}
			c.heldFull.Add(1)
		}
	}
	c.push(&ev)
}

// firstData hands on the connect held for cookie, now that its first data
// came: a ClientHello, or, with plaintext, anything else.
func (c *Collector) firstData(cookie uint64, plaintext bool) {
	ev, ok := c.held.take(cookie)
	if !ok {
		return
	}
	ev.Plaintext = plaintext
	c.push(ev)
}

// sweep forgets connects whose outcome can no longer come: a socket that
// some other program kept from reaching ESTABLISHED or CLOSE in our sight,
// or whose outcome record the ring buffer had no room for (counted then).
func (c *Collector) sweep() {
	cutoff := time.Now().Add(-c.cfg.ConnExpiry).UnixNano()
	// The index cannot change while it is ranged over: the expired are
	// gathered first. A sweep finds few, and runs every sweepEvery.
	var expired []uint64
	c.inflight.index.Range(func(cookie uint64, i int32) bool {
		if c.inflight.slots[i].time < cutoff {
			expired = append(expired, cookie)
		}
		return true
	})
	for _, cookie := range expired {
		c.inflight.take(cookie)
	}
	// A start whose outcome the kernel lost was counted then: which of
	// those waiting it is cannot be told, only how many there are.
	n := uint64(len(expired))
	counted := min(n, c.orphans)
	c.orphans -= counted
	if n > counted {
		c.lose(lossConnExpired, n-counted)
	}
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
