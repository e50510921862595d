// Package enrich adds what user space knows of a caller to the kernel's
// events: the process behind the PID, the cgroup path behind the cgroup id,
// and the identity string derived from them.
package enrich

import (
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/callscope/callscope/collector"
)

// Config tunes an Enricher; zero values pick defaults.
type Config struct {
	// CgroupRoot is the cgroup2 mount; cgroup paths are relative to it.
	CgroupRoot string
	// ProcRoot is where the host's procfs is mounted. Default /proc.
	ProcRoot string
	// MaxProcesses and MaxCgroups bound the caches. Defaults 16384, 4096.
	MaxProcesses int
	MaxCgroups   int
	Logger       *slog.Logger
}

// Stats counts cache use and lookups that found nothing.
type Stats struct {
	ProcessHits, ProcessMisses uint64
	ProcessGone                uint64 // process exited (or PID reused) before /proc was read
	CgroupHits, CgroupMisses   uint64
	CgroupGone                 uint64 // cgroup removed before its path was resolved
}

// Enricher resolves callers. It is meant for one pipeline goroutine; Stats
// may be read from any.
type Enricher struct {
	procs   *procCache
	cgroups *cgroupResolver
	log     *slog.Logger

	procHits, procMisses, procGone atomic.Uint64
	cgHits, cgMisses, cgGone       atomic.Uint64
}

// New returns an Enricher.
func New(cfg Config) (*Enricher, error) {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.MaxProcesses == 0 {
		cfg.MaxProcesses = 16384
	}
	if cfg.MaxCgroups == 0 {
		cfg.MaxCgroups = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("component", "enrich")
	cg, err := newCgroupResolver(cfg.CgroupRoot, cfg.MaxCgroups, log)
	if err != nil {
		return nil, err
	}
	return &Enricher{
		procs:   newProcCache(cfg.ProcRoot, cfg.MaxProcesses),
		cgroups: cg,
		log:     log,
	}, nil
}

// Close releases the cgroup mount handle.
func (e *Enricher) Close() error { return e.cgroups.close() }

// Stats returns the counts so far.
func (e *Enricher) Stats() Stats {
	return Stats{
		ProcessHits: e.procHits.Load(), ProcessMisses: e.procMisses.Load(), ProcessGone: e.procGone.Load(),
		CgroupHits: e.cgHits.Load(), CgroupMisses: e.cgMisses.Load(), CgroupGone: e.cgGone.Load(),
	}
}

// Enrich fills out from in. On cache hits it does not allocate.
func (e *Enricher) Enrich(in *collector.Event, out *Event) {
	*out = Event{Event: *in}
	if in.Kind != collector.KindConnect {
		return
	}

	p, hit := e.procs.get(in.PID, in.ProcStart, in.UID)
	if hit {
		e.procHits.Add(1)
	} else {
		e.procMisses.Add(1)
		if p == nil {
			e.procGone.Add(1)
		}
	}
	if p != nil {
		out.Process = &p.Process
		out.Identity = p.identity(in.UID)
	}

	if in.CgroupID != 0 {
		path, hit, ok := e.cgroups.path(in.CgroupID)
		switch {
		case hit:
			e.cgHits.Add(1)
		case ok:
			e.cgMisses.Add(1)
		default:
			e.cgMisses.Add(1)
			e.cgGone.Add(1)
		}
		out.CgroupPath = path
	}
}

// cachedProcess is a Process with its identity string, built once: the
// identity of most events is then a cache hit with no allocation.
type cachedProcess struct {
	Process
	uid uint32
	id  string
}

func (p *cachedProcess) identity(uid uint32) string {
	if p.Exe == "" {
		return ""
	}
	if uid == p.uid && p.id != "" {
		return p.id
	}
	// A thread that changed its credentials: rare, so not cached.
	return exeIdentity(p.Exe, uid)
}

// exeIdentity is the contract's identity for a process that is neither a
// pod nor a systemd service.
func exeIdentity(exe string, uid uint32) string {
	return "exe:" + exe + " uid:" + strconv.FormatUint(uint64(uid), 10)
}
