// Package learn drafts CallScope policies from the calls a node's events
// show: one CallScope per caller, allowing what it was seen to call and
// no more, with the evidence for each destination as YAML comments.
//
// A Learner reads events (JSON lines of the schema callscope/v1), keeps
// one small record per distinct (caller, destination, port), and writes
// the drafts at the end. Connect, tls and verdict events are calls, of
// whatever outcome: a refused connect is still a call its caller made.
// Loss events are counted, and every line that taught nothing is counted
// with its reason.
//
// Each call is written by the best name it has: the callee's Service
// (service) or namespace (namespace) when the cluster named it, then the
// TLS server name its connection sent (sni), then the name its caller
// resolved (dns), and its address (cidr) when it has no name. An
// established connect waits for its tls event (by conn), so that a
// call that sent a ClientHello is written by its SNI alone.
package learn

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unsafe"
)

// Defaults of Config.
const (
	DefaultWildcardMin = 3
	DefaultMaxPrefix4  = 24
	DefaultMaxPrefix6  = 64
	DefaultMaxPairs    = 1_000_000
)

// joinWindow is how long, in event time, an established connect waits
// for its tls event: the agent's own pending timeout.
const joinWindow = 10 * time.Second

// maxJoins bounds the connects awaiting their tls event; past it the
// oldest is learnt by its own destination.
const maxJoins = 65536

// maxCallers bounds the cache of callers' facts; past it, it starts over.
const maxCallers = 4096

// maxLossKinds bounds the (stage, reason) pairs of loss events counted
// apart; the rest are counted together.
const maxLossKinds = 64

// Config says what to learn and how to generalize.
type Config struct {
	// Since and Until bound the event times learnt from: Since included,
	// Until excluded. Zero: unbounded.
	Since, Until time.Time
	// WildcardMin is how many distinct names, one label below the same
	// parent, make a "*.parent" pattern. Zero: DefaultWildcardMin;
	// negative or 1: no wildcards are made.
	WildcardMin int
	// MaxPrefix4 and MaxPrefix6 are the widest prefixes addresses are
	// merged into (prefix lengths, such as 24 and 64).
	MaxPrefix4, MaxPrefix6 int
	// MaxPairs bounds the distinct (caller, destination, port) records.
	MaxPairs int
}

func (c *Config) defaults() error {
	if c.WildcardMin == 0 {
		c.WildcardMin = DefaultWildcardMin
	}
	if c.MaxPrefix4 == 0 {
		c.MaxPrefix4 = DefaultMaxPrefix4
	}
	if c.MaxPrefix6 == 0 {
		c.MaxPrefix6 = DefaultMaxPrefix6
	}
	if c.MaxPairs == 0 {
		c.MaxPairs = DefaultMaxPairs
	}
	switch {
	case c.MaxPrefix4 < 8 || c.MaxPrefix4 > 32:
		return fmt.Errorf("IPv4 max prefix /%d: want 8 to 32", c.MaxPrefix4)
	case c.MaxPrefix6 < 16 || c.MaxPrefix6 > 128:
		return fmt.Errorf("IPv6 max prefix /%d: want 16 to 128", c.MaxPrefix6)
	case c.MaxPairs < 0:
		return fmt.Errorf("max pairs %d: want a positive number", c.MaxPairs)
	case !c.Since.IsZero() && !c.Until.IsZero() && !c.Until.After(c.Since):
		return fmt.Errorf("until %s is not after since %s", c.Until.Format(time.RFC3339), c.Since.Format(time.RFC3339))
	}
	return nil
}

// Stats counts what was read and what became of it.
type Stats struct {
	Lines uint64 // lines read (events, or what should have been)
	Used  uint64 // calls learnt
	// Skipped counts the lines that taught nothing, by reason.
	Skipped [numSkips]uint64
	// Merged counts the tls and verdict events learnt with the connect
	// they follow (by conn), as one call; BySNI those of them that named
	// the call by their SNI.
	Merged, BySNI uint64
	// LossEvents counts the loss events read; Lost sums their counts by
	// stage and reason.
	LossEvents uint64
	Lost       []Loss
	// Pairs is the number of distinct (caller, destination, port) records.
	Pairs int
	// First and Last are the times of the first and last call learnt.
	First, Last time.Time
}

// Loss is what loss events of one stage and reason said.
type Loss struct {
	Stage, Reason string
	Events, Count uint64
}

// Summary says it all on one line, for people.
func (s *Stats) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d lines read, %d calls learnt", s.Lines, s.Used)
	if s.Merged > 0 {
		fmt.Fprintf(&b, " (with %d tls or verdict events of the same connections, %d of them naming the call by SNI)", s.Merged, s.BySNI)
	}
	fmt.Fprintf(&b, ", %d (caller, destination, port) pairs", s.Pairs)
	var skips []string
	for r := Skip(1); r < numSkips; r++ {
		if n := s.Skipped[r]; n > 0 {
			skips = append(skips, fmt.Sprintf("%d %s", n, r))
		}
	}
	if len(skips) > 0 {
		fmt.Fprintf(&b, "; skipped: %s", strings.Join(skips, ", "))
	} else {
		b.WriteString("; none skipped")
	}
	if s.LossEvents > 0 {
		var ls []string
		for _, l := range s.Lost {
			ls = append(ls, fmt.Sprintf("%s/%s %d in %d event(s)", l.Stage, l.Reason, l.Count, l.Events))
		}
		fmt.Fprintf(&b, "; %d loss event(s): %s", s.LossEvents, strings.Join(ls, ", "))
	} else {
		b.WriteString("; no loss events")
	}
	return b.String()
}

// destination kinds, in the order a reviewer reads them.
type destKind uint8

const (
	kindService destKind = iota + 1
	kindNamespace
	kindSNI
	kindDNS
	kindCIDR
)

var kindKeys = [...]string{kindService: "service", kindNamespace: "namespace", kindSNI: "sni", kindDNS: "dns", kindCIDR: "cidr"}

// dest is one destination of a call, before any generalization.
type dest struct {
	kind destKind
	name uint32 // interned; for every kind but cidr
	addr netip.Addr
	port uint16
}

// pairKey is one (caller, destination, port); 28 bytes.
type pairKey struct {
	subject uint32
	name    uint32
	addr    [16]byte
	port    uint16
	kind    destKind
	v4      bool
}

// pairStats is the evidence of one pair.
type pairStats struct {
	calls       uint64
	first, last int64
	exe         uint32 // interned exe of the first call; 0: none known
}

// subjectKind says which selector names a caller.
type subjectKind uint8

const (
	subjectPod  subjectKind = iota + 1 // namespace + serviceAccount
	subjectUnit                        // systemdUnit
	subjectExe                         // exe
)

type subjectKey struct {
	kind subjectKind
	a, b string // namespace and service account; unit; exe
}

type caller struct {
	subject, exe uint32
}

type subject struct {
	key        subjectKey
	identities []string // the first few identities seen, in order
	more       int      // identities past those
}

const maxIdentities = 4

// pendingJoin is an established connect awaiting its tls event.
type pendingJoin struct {
	subject uint32
	own     dest
	time    int64
	exe     uint32
	seq     uint64
}

type joinRef struct {
	conn, seq uint64
	time      int64 // of the connect
}

// Learner learns from events; see the package documentation. It is for
// one goroutine.
type Learner struct {
	cfg         Config
	since, till int64 // Unix ns; 0: open
	stats       Stats
	losses      map[[2]string]*Loss

	subjects   []subject
	subjectIDs map[subjectKey]uint32
	// callers caches the subject of each caller's facts (identity,
	// namespace, service account, exe, joined by NULs); callerKey is the
	// buffer they are joined in.
	callers   map[string]caller
	callerKey []byte
	lastExe   uint32 // the interned exe of the last event's caller
	scratch   []byte

	names   []string // interned names; names[0] is ""
	nameIDs map[string]uint32
	exes    []string
	exeIDs  map[string]uint32

	pairs   map[pairKey]uint32 // to an index of stats
	records []pairStats

	joins    map[uint64]pendingJoin // by conn
	joinFIFO []joinRef              // ring, oldest first
	joinHead int
	joinLen  int
	joinSeq  uint64
}

// New returns a Learner.
func New(cfg Config) (*Learner, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	l := &Learner{
		cfg:        cfg,
		losses:     map[[2]string]*Loss{},
		subjectIDs: map[subjectKey]uint32{},
		callers:    map[string]caller{},
		names:      []string{""},
		nameIDs:    map[string]uint32{},
		exes:       []string{""},
		exeIDs:     map[string]uint32{},
		pairs:      map[pairKey]uint32{},
		joins:      map[uint64]pendingJoin{},
		joinFIFO:   make([]joinRef, maxJoins),
	}
	if !cfg.Since.IsZero() {
		l.since = cfg.Since.UnixNano()
	}
	if !cfg.Until.IsZero() {
		l.till = cfg.Until.UnixNano()
	}
	return l, nil
}

// Read learns from the JSON lines of r.
func (l *Learner) Read(r io.Reader) error {
	return ReadEvents(r, l.Add, func(s Skip, _ []byte) {
		l.stats.Lines++
		l.stats.Skipped[s]++
	})
}

// Line learns from one line, without its newline.
func (l *Learner) Line(line []byte) {
	var ev Event
	if s := DecodeLine(line, &ev); s != SkipNone {
		l.stats.Lines++
		l.stats.Skipped[s]++
		return
	}
	l.Add(&ev)
}

// Stats returns the counts so far.
func (l *Learner) Stats() Stats {
	s := l.stats
	s.Pairs = len(l.pairs)
	s.Lost = nil
	for _, v := range l.losses {
		s.Lost = append(s.Lost, *v)
	}
	slices.SortFunc(s.Lost, func(a, b Loss) int {
		return strings.Compare(a.Stage+"\x00"+a.Reason, b.Stage+"\x00"+b.Reason)
	})
	return s
}

func (l *Learner) skip(s Skip) { l.stats.Skipped[s]++ }

// Add learns from one event read by ReadEvents; it keeps none of ev's
// strings.
func (l *Learner) Add(ev *Event) {
	l.stats.Lines++
	if ev.Time != 0 && ((l.since != 0 && ev.Time < l.since) || (l.till != 0 && ev.Time >= l.till)) {
		l.skip(SkipOutsideWindow)
		return
	}
	switch ev.Kind {
	case KindLoss:
		l.loss(ev)
		return
	case KindConnect, KindTLS, KindVerdict:
	default:
		l.skip(SkipOtherKind)
		return
	}
	if ev.Time == 0 || !ev.Dst.Addr().IsValid() {
		l.skip(SkipIncomplete)
		return
	}
	l.expireJoins(ev.Time)
	subj, ok := l.subject(ev)
	if !ok {
		return
	}
	switch ev.Kind {
	case KindConnect:
		own := l.ownDest(ev, false)
		if ev.Outcome == "established" && ev.Conn != 0 && own.kind != 0 {
			l.await(ev, subj, own)
			return
		}
		l.credit(subj, own, ev.Time, ev.Exe)
	case KindTLS:
		pj, joined := l.joins[ev.Conn]
		if ev.Conn != 0 && joined {
			delete(l.joins, ev.Conn)
			d := pj.own
			if d.kind != kindService && d.kind != kindNamespace {
				if sni := l.sniDest(ev); sni.kind != 0 {
					d = sni
					l.stats.BySNI++
				}
			}
			l.stats.Merged++
			l.creditWith(pj.subject, d, ev.Time, pj.exe, "")
			return
		}
		l.credit(subj, l.ownDest(ev, true), ev.Time, ev.Exe)
	case KindVerdict:
		// A copy of a connect no ClientHello settled: the connect is the
		// call when it was read.
		if pj, joined := l.joins[ev.Conn]; ev.Conn != 0 && joined {
			delete(l.joins, ev.Conn)
			l.stats.Merged++
			l.creditWith(pj.subject, pj.own, pj.time, pj.exe, "")
			return
		}
		l.credit(subj, l.ownDest(ev, false), ev.Time, ev.Exe)
	}
}

func (l *Learner) loss(ev *Event) {
	l.stats.LossEvents++
	k := [2]string{ev.LossStage, ev.LossReason}
	v, ok := l.losses[k]
	if !ok {
		if len(l.losses) >= maxLossKinds {
			k = [2]string{"other", "other"}
			if v, ok = l.losses[k]; !ok {
				v = &Loss{Stage: "other", Reason: "other"}
				l.losses[k] = v
			}
		} else {
			v = &Loss{Stage: strings.Clone(ev.LossStage), Reason: strings.Clone(ev.LossReason)}
			l.losses[k] = v
		}
	}
	v.Events++
	v.Count += ev.LossCount
}

// subject finds the caller of ev, interning it. Without any fact naming
// the caller, or past the cap, the event is counted and ok is false.
func (l *Learner) subject(ev *Event) (uint32, bool) {
	// Callers come back: their events' facts, as one key, give the
	// subject without the checks and without allocating.
	l.callerKey = append(l.callerKey[:0], ev.Identity...)
	l.callerKey = append(append(l.callerKey, 0), ev.Namespace...)
	l.callerKey = append(append(l.callerKey, 0), ev.ServiceAccount...)
	l.callerKey = append(append(l.callerKey, 0), ev.Exe...)
	if c, ok := l.callers[string(l.callerKey)]; ok {
		l.lastExe = c.exe
		return c.subject, true
	}
	var k subjectKey
	switch {
	case ev.Namespace != "" && ev.ServiceAccount != "" && isDNSLabel(ev.Namespace) && len(ev.Namespace) <= 63 && isSubdomain(ev.ServiceAccount):
		k = subjectKey{kind: subjectPod, a: ev.Namespace, b: ev.ServiceAccount}
	case strings.HasPrefix(ev.Identity, "unit:") && printable(ev.Identity[5:]):
		k = subjectKey{kind: subjectUnit, a: ev.Identity[5:]}
	case ev.Exe != "" && printable(ev.Exe):
		k = subjectKey{kind: subjectExe, a: ev.Exe}
	default:
		l.skip(SkipNoIdentity)
		return 0, false
	}
	id, ok := l.subjectIDs[k]
	if !ok {
		if len(l.pairs) >= l.cfg.MaxPairs {
			l.skip(SkipOverCap)
			return 0, false
		}
		k.a, k.b = strings.Clone(k.a), strings.Clone(k.b)
		id = uint32(len(l.subjects))
		l.subjects = append(l.subjects, subject{key: k})
		l.subjectIDs[k] = id
	}
	if ev.Identity != "" {
		s := &l.subjects[id]
		if !slices.Contains(s.identities, ev.Identity) {
			if len(s.identities) < maxIdentities {
				s.identities = append(s.identities, strings.Clone(ev.Identity))
			} else {
				s.more++ // may count one twice: said as "more"
			}
		}
	}
	if len(l.callers) >= maxCallers {
		clear(l.callers)
	}
	l.lastExe = l.exe(ev.Exe)
	l.callers[string(l.callerKey)] = caller{id, l.lastExe}
	return id, true
}

// ownDest is the destination an event names by itself: its callee, the
// SNI of a tls event, the name its caller resolved, its address.
func (l *Learner) ownDest(ev *Event, tls bool) dest {
	port := ev.Dst.Port()
	if ev.CalleeService != "" && ev.CalleeNamespace != "" {
		l.scratch = append(append(append(l.scratch[:0], ev.CalleeNamespace...), '/'), ev.CalleeService...)
		if s := unsafe.String(unsafe.SliceData(l.scratch), len(l.scratch)); isService(s) {
			return dest{kind: kindService, name: l.name(s), port: port}
		}
	}
	if ev.CalleeNamespace != "" && isDNSLabel(ev.CalleeNamespace) && len(ev.CalleeNamespace) <= 63 {
		return dest{kind: kindNamespace, name: l.name(ev.CalleeNamespace), port: port}
	}
	if tls {
		if d := l.sniDest(ev); d.kind != 0 {
			return d
		}
	}
	if ev.NameSource == "dns" {
		if n, ok := hostName(ev.DstName); ok {
			return dest{kind: kindDNS, name: l.name(n), port: port}
		}
	}
	return dest{kind: kindCIDR, addr: ev.Dst.Addr(), port: port}
}

func (l *Learner) sniDest(ev *Event) dest {
	sni := ev.SNI
	if sni == "" && ev.NameSource == "sni" {
		sni = ev.DstName
	}
	if n, ok := hostName(sni); ok {
		return dest{kind: kindSNI, name: l.name(n), port: ev.Dst.Port()}
	}
	return dest{}
}

// name interns s. Names are interned as their pairs are made, and so
// bounded by them; one made for a pair refused past the cap is kept.
func (l *Learner) name(s string) uint32 {
	if id, ok := l.nameIDs[s]; ok {
		return id
	}
	if len(l.pairs) >= l.cfg.MaxPairs {
		return 0
	}
	s = strings.Clone(s)
	id := uint32(len(l.names))
	l.names = append(l.names, s)
	l.nameIDs[s] = id
	return id
}

func (l *Learner) exe(s string) uint32 {
	if s == "" {
		return 0
	}
	if id, ok := l.exeIDs[s]; ok {
		return id
	}
	if len(l.exes) > l.cfg.MaxPairs {
		return 0
	}
	s = strings.Clone(s)
	id := uint32(len(l.exes))
	l.exes = append(l.exes, s)
	l.exeIDs[s] = id
	return id
}

func (l *Learner) credit(subj uint32, d dest, t int64, exe string) {
	l.creditWith(subj, d, t, l.lastExe, exe)
}

// creditWith learns one call of subj to d at t, by the exe interned as
// exeID, or else named exe.
func (l *Learner) creditWith(subj uint32, d dest, t int64, exeID uint32, exe string) {
	if d.kind != kindCIDR && d.name == 0 {
		l.skip(SkipOverCap) // its name could not be kept
		return
	}
	k := pairKey{subject: subj, name: d.name, port: d.port, kind: d.kind}
	if d.kind == kindCIDR {
		k.addr, k.v4 = d.addr.As16(), d.addr.Is4()
	}
	i, ok := l.pairs[k]
	if !ok {
		if len(l.pairs) >= l.cfg.MaxPairs {
			l.skip(SkipOverCap)
			return
		}
		i = uint32(len(l.records))
		l.records = append(l.records, pairStats{first: t, last: t})
		l.pairs[k] = i
	}
	p := &l.records[i]
	if p.calls == 0 || t < p.first {
		// The example exe is the earliest call's.
		if exeID == 0 {
			exeID = l.exe(exe)
		}
		p.exe, p.first = exeID, t
	}
	p.calls++
	p.last = max(p.last, t)
	l.stats.Used++
	if l.stats.First.IsZero() || t < l.stats.First.UnixNano() {
		l.stats.First = time.Unix(0, t).UTC()
	}
	if t > l.stats.Last.UnixNano() {
		l.stats.Last = time.Unix(0, t).UTC()
	}
}

// await holds an established connect until its tls event, or until it
// cannot come any more.
func (l *Learner) await(ev *Event, subj uint32, own dest) {
	if old, ok := l.joins[ev.Conn]; ok {
		// The socket connected again: its earlier connection sent no hello.
		delete(l.joins, ev.Conn)
		l.creditWith(old.subject, old.own, old.time, old.exe, "")
	}
	for l.joinLen == len(l.joinFIFO) {
		l.popJoin(true)
	}
	l.joinSeq++
	l.joins[ev.Conn] = pendingJoin{subject: subj, own: own, time: ev.Time, exe: l.lastExe, seq: l.joinSeq}
	l.joinFIFO[(l.joinHead+l.joinLen)%len(l.joinFIFO)] = joinRef{conn: ev.Conn, seq: l.joinSeq, time: ev.Time}
	l.joinLen++
}

// popJoin drops the oldest entry of the ring, learning its connect by its
// own destination if it still waits.
func (l *Learner) popJoin(settle bool) {
	r := l.joinFIFO[l.joinHead]
	l.joinHead = (l.joinHead + 1) % len(l.joinFIFO)
	l.joinLen--
	if pj, ok := l.joins[r.conn]; ok && pj.seq == r.seq && settle {
		delete(l.joins, r.conn)
		l.creditWith(pj.subject, pj.own, pj.time, pj.exe, "")
	}
}

// expireJoins settles the connects that waited joinWindow by now.
func (l *Learner) expireJoins(now int64) {
	// The ring is in the order connects were read, near enough the order
	// of their times; one read late waits a little longer.
	for l.joinLen > 0 && now-l.joinFIFO[l.joinHead].time >= int64(joinWindow) {
		l.popJoin(true)
	}
}

// flush settles every connect still waiting: the input has ended.
func (l *Learner) flush() {
	for l.joinLen > 0 {
		l.popJoin(true)
	}
}
