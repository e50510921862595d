// Package enrich adds what user space knows of a caller to the kernel's
// events: the process behind the PID, the cgroup path behind the cgroup id
// and the container, pod or systemd unit it names, the Kubernetes pod, and
// the identity string derived from them.
package enrich

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich/dnsnames"
	"github.com/callscope/callscope/internal/gencache"
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
	// Pods names the pods of this node; nil turns Kubernetes enrichment off.
	Pods *PodIndex
	// Callees names the destinations of calls inside the cluster; nil
	// leaves Event.Callee nil.
	Callees *CalleeIndex
	// TrustDomain is the SPIFFE trust domain of pod identities. Default
	// cluster.local.
	TrustDomain string
	// PodWait bounds how long an event waits for its pod to reach Pods: a
	// pod's first connects can come before the informer hears of it.
	// Default 2s.
	PodWait time.Duration
	// MaxWaiting bounds the events held back for their pod; beyond it the
	// oldest goes on without pod facts. Default 4096.
	MaxWaiting int
	// Names configures the map of DNS answers that names destinations.
	Names dnsnames.Config
	// Logger is where the enricher logs; nil logs nothing.
	Logger *slog.Logger
}

// Stats counts cache use and lookups that found nothing.
type Stats struct {
	ProcessHits, ProcessMisses uint64
	ProcessGone                uint64 // process exited (or PID reused) before /proc was read
	CgroupHits, CgroupMisses   uint64
	CgroupGone                 uint64 // cgroup removed before its path was resolved
	PodWaits                   uint64 // events held back for a pod the index did not know yet
	PodUnknown                 uint64 // events that went on without their pod's facts
	DNS                        dnsnames.Stats
	DNSTCPSkipped              uint64 // TCP DNS segments after a connection's first, not read
	Names                      int    // addresses the DNS map names now
	// Destination lookups in the callee index (with Config.Callees): found,
	// not found once the index had synced (every address it does not
	// name, those outside the cluster included), and not found before it
	// had.
	CalleeFound, CalleeUnknown, CalleeUnsynced uint64
	Callees                                    CalleeStats
}

// Enricher resolves callers. It is meant for one pipeline goroutine; Stats
// may be read from any.
type Enricher struct {
	cfg     Config
	procs   *procCache
	cgroups *cgroupResolver
	spiffe  *spiffeCache
	names   *dnsnames.Map
	tcpDNS  *gencache.Cache[uint64, struct{}] // TCP connections whose first DNS segment was read
	waiting []waitingEvent                    // FIFO, oldest first
	// held counts the waiting events of each connection, so that a later
	// event of one (its tls event) waits behind them instead of overtaking.
	held map[uint64]int
	// sharedNames says answers came without a namespace (kernels before
	// 6.3): connects then look there too. Otherwise that second lookup
	// could only miss.
	sharedNames bool
	log         *slog.Logger

	procHits, procMisses, procGone atomic.Uint64
	cgHits, cgMisses, cgGone       atomic.Uint64
	podWaits, podUnknown           atomic.Uint64
	dnsTCPSkipped                  atomic.Uint64
	calleeFound, calleeUnknown     atomic.Uint64
	calleeUnsynced                 atomic.Uint64
}

// waitingEvent is an event held back for its pod, with what its identity
// falls back to if the pod does not come.
type waitingEvent struct {
	ev     Event
	proc   *cachedProcess
	unitID string
	until  time.Time
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
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.PodWait == 0 {
		cfg.PodWait = 2 * time.Second
	}
	if cfg.MaxWaiting == 0 {
		cfg.MaxWaiting = 4096
	}
	log := cfg.Logger.With("component", "enrich")
	cg, err := newCgroupResolver(cfg.CgroupRoot, cfg.MaxCgroups, log)
	if err != nil {
		return nil, err
	}
	// Without CAP_SYS_PTRACE the exe of every process holding privileges
	// the agent lacks is unreadable: say so once, not per event.
	if _, err := os.Readlink(filepath.Join(cfg.ProcRoot, "1", "exe")); errors.Is(err, fs.ErrPermission) {
		log.Warn("cannot read /proc/1/exe: the executables, and so the identities, of processes with other privileges will be unknown; grant CAP_SYS_PTRACE")
	}
	return &Enricher{
		cfg:     cfg,
		procs:   newProcCache(cfg.ProcRoot, cfg.MaxProcesses),
		cgroups: cg,
		spiffe:  newSpiffeCache(cfg.TrustDomain, 4096),
		names:   dnsnames.NewMap(cfg.Names),
		tcpDNS:  gencache.New[uint64, struct{}](4096),
		held:    make(map[uint64]int),
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
		PodWaits: e.podWaits.Load(), PodUnknown: e.podUnknown.Load(),
		DNS: e.names.Stats(), Names: e.names.Len(), DNSTCPSkipped: e.dnsTCPSkipped.Load(),
		CalleeFound: e.calleeFound.Load(), CalleeUnknown: e.calleeUnknown.Load(), CalleeUnsynced: e.calleeUnsynced.Load(),
		Callees: e.cfg.Callees.Stats(),
	}
}

// Enrich fills out from in, a connect or loss event (process exits go
// through EnrichBatch, which drops them). It reports wait when the event names a pod
// that the pod index does not know yet; EnrichBatch holds such events back.
// On cache hits it does not allocate.
func (e *Enricher) Enrich(in *collector.Event, out *Event) (wait bool) {
	proc, unitID, wait := e.enrich(in, out)
	e.setIdentity(out, proc, unitID)
	return wait
}

func (e *Enricher) enrich(in *collector.Event, out *Event) (proc *cachedProcess, unitID string, wait bool) {
	*out = Event{Event: *in}
	switch in.Kind {
	case collector.KindConnect:
		out.DstName = e.dnsName(in)
	case collector.KindTLS:
		if in.Hello != nil && in.Hello.SNI != "" {
			out.DstName, out.NameSource = in.Hello.SNI, NameSourceSNI
		} else {
			out.DstName = e.dnsName(in)
		}
	default:
		return nil, "", false
	}
	if out.DstName != "" && out.NameSource == "" {
		out.NameSource = NameSourceDNS
	}
	if e.cfg.Callees != nil {
		e.callee(in, out)
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
	}

	if in.CgroupID != 0 {
		ce, hit := e.cgroups.entry(in.CgroupID)
		if hit {
			e.cgHits.Add(1)
		} else {
			e.cgMisses.Add(1)
		}
		if ce.path == "" {
			e.cgGone.Add(1)
		}
		out.CgroupPath, out.Cgroup, unitID = ce.path, ce.info, ce.unitID
	}

	if uid := out.Cgroup.PodUID; uid != "" && e.cfg.Pods != nil {
		if pod, ok := e.cfg.Pods.Lookup(uid); ok {
			out.Pod = pod
		} else {
			wait = true
		}
	}
	return p, unitID, wait
}

// setIdentity names the caller: a pod by its SPIFFE ID, a host service by
// its systemd unit, anything else by executable and user.
func (e *Enricher) setIdentity(out *Event, p *cachedProcess, unitID string) {
	switch {
	case out.Pod != nil:
		out.Identity = e.spiffe.id(out.Pod)
	case unitID != "":
		out.Identity = unitID
	case p != nil:
		out.Identity = p.identity(out.UID)
	}
}

// EnrichBatch enriches in, appending to out[:0], and returns out. An event
// whose pod the index does not know yet is held back, for up to PodWait,
// and comes out of a later call (or of Release) once the pod is known or
// the wait is over: a new pod's first calls are not left anonymous, and
// the pipeline never stalls for them. Held events come out before the
// batch that releases them.
func (e *Enricher) EnrichBatch(in []collector.Event, out []Event, now time.Time) []Event {
	out = e.Release(out[:0], now, false)
	for i := range in {
		switch in[i].Kind {
		case collector.KindExit:
			e.procs.forget(in[i].PID, in[i].ProcStart)
			continue
		case collector.KindDNS:
			e.observeDNS(&in[i])
			continue
		case collector.KindExec:
			e.procs.execed(in[i].PID, in[i].ProcStart, in[i].Exec)
			continue
		}
		out = append(out, Event{})
		ev := &out[len(out)-1]
		proc, unitID, wait := e.enrich(&in[i], ev)
		// An event of a connection whose connect is held back waits behind
		// it: a tls event must not overtake its connect.
		if !wait && e.held[in[i].Cookie] > 0 {
			wait = true
		}
		if !wait {
			e.setIdentity(ev, proc, unitID)
			continue
		}
		e.podWaits.Add(1)
		w := waitingEvent{ev: *ev, proc: proc, unitID: unitID, until: now.Add(e.cfg.PodWait)}
		out = out[:len(out)-1]
		if len(e.waiting) >= e.cfg.MaxWaiting {
			out = e.releaseOldest(out)
		}
		e.waiting = append(e.waiting, w)
		e.held[w.ev.Cookie]++
	}
	return out
}

// callee names the destination from the callee index.
func (e *Enricher) callee(in *collector.Event, out *Event) {
	if c, ok := e.cfg.Callees.Lookup(in.Dst.Addr()); ok {
		out.Callee = c
		e.calleeFound.Add(1)
	} else if e.cfg.Callees.Synced() {
		e.calleeUnknown.Add(1)
	} else {
		e.calleeUnsynced.Add(1)
	}
}

// dnsName is a name the caller's network namespace resolved to the
// destination. Answers whose namespace the kernel could not tell are kept
// under namespace 0 and serve every namespace.
func (e *Enricher) dnsName(in *collector.Event) string {
	now := time.Unix(0, in.Time)
	addr := in.Dst.Addr()
	if name, ok := e.names.Lookup(in.NetNS, addr, now); ok {
		return name
	}
	if e.sharedNames && in.NetNS != 0 {
		if name, ok := e.names.Lookup(0, addr, now); ok {
			return name
		}
	}
	return ""
}

// observeDNS learns the names of an answer. A malformed one is counted by
// the map; it names nothing.
func (e *Enricher) observeDNS(in *collector.Event) {
	if in.NetNS == 0 {
		e.sharedNames = true
	}
	if in.DNSOverTCP {
		// Only a connection's first segment from the server starts at a
		// message: a later one starts anywhere, and bytes an attacker chose
		// (a TXT record, say) could read as a whole answer.
		if _, seen := e.tcpDNS.Get(in.Cookie); seen {
			e.dnsTCPSkipped.Add(1)
			return
		}
		e.tcpDNS.Put(in.Cookie, struct{}{})
		e.names.ObserveTCP(in.NetNS, in.DNS, time.Unix(0, in.Time))
	} else {
		e.names.ObserveUDP(in.NetNS, in.DNS, time.Unix(0, in.Time))
	}
}

// letGo forgets a held event of the connection cookie.
func (e *Enricher) letGo(cookie uint64) {
	if e.held[cookie]--; e.held[cookie] <= 0 {
		delete(e.held, cookie)
	}
}

// Waiting reports how many events are held back for their pod.
func (e *Enricher) Waiting() int { return len(e.waiting) }

// Release appends to out the held events whose pod is now known or whose
// wait is over, or all of them when all is set (at shutdown), in the order
// they came.
func (e *Enricher) Release(out []Event, now time.Time, all bool) []Event {
	kept := e.waiting[:0]
	for i := range e.waiting {
		w := &e.waiting[i]
		if pod, ok := e.cfg.Pods.Lookup(w.ev.Cgroup.PodUID); ok {
			w.ev.Pod = pod
		} else if !all && now.Before(w.until) {
			kept = append(kept, *w)
			continue
		} else {
			e.podUnknown.Add(1)
		}
		e.setIdentity(&w.ev, w.proc, w.unitID)
		e.letGo(w.ev.Cookie)
		out = append(out, w.ev)
	}
	clear(e.waiting[len(kept):])
	e.waiting = kept
	return out
}

// releaseOldest lets the oldest held event go on as it is.
func (e *Enricher) releaseOldest(out []Event) []Event {
	w := &e.waiting[0]
	e.podUnknown.Add(1)
	e.setIdentity(&w.ev, w.proc, w.unitID)
	e.letGo(w.ev.Cookie)
	out = append(out, w.ev)
	e.waiting = append(e.waiting[:0], e.waiting[1:]...)
	return out
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

// spiffeCache keeps each pod's SPIFFE ID, built once per pod object: pods
// are replaced, never changed, when the API server updates them.
type spiffeCache struct {
	trustDomain string
	ids         *gencache.Cache[*Pod, string]
}

func newSpiffeCache(td string, size int) *spiffeCache {
	return &spiffeCache{trustDomain: td, ids: gencache.New[*Pod, string](size)}
}

func (c *spiffeCache) id(p *Pod) string {
	if id, ok := c.ids.Get(p); ok {
		return id
	}
	id := SpiffeID(c.trustDomain, p.Namespace, p.ServiceAccount)
	c.ids.Put(p, id)
	return id
}

// SpiffeID is the identity of a Kubernetes service account, in the form
// SPIFFE and Istio use: spiffe://<trust domain>/ns/<namespace>/sa/<account>.
func SpiffeID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}
