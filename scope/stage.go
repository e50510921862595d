package scope

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

// StageConfig tunes a Stage; zero values pick defaults.
type StageConfig struct {
	// Policies gives the matcher of each batch. Nil judges nothing: events
	// go on with a zero verdict.
	Policies *Policies
	// PendingTimeout is how long a pending call waits for its TLS
	// ClientHello before it is judged a violation (would_violate, for a
	// staged scope). Default 10s.
	PendingTimeout time.Duration
	// MaxPending bounds the pending calls remembered; past it the oldest
	// is judged without waiting any longer. Default 65536.
	MaxPending int
	// Findings says how to find what; the zero value finds the defaults.
	Findings FindingsConfig
	// Logger is where the stage logs; nil logs nothing.
	Logger *slog.Logger
}

// StageStats counts what a Stage did.
type StageStats struct {
	// Verdicts given, by verdict, including those of verdict events.
	// WouldViolate counts the staged scopes' refusals, whether the verdict
	// or the staged outcome beside an enforced verdict.
	Allowed, Violation, Unscoped, Pending, WouldViolate uint64
	// Pending calls closed by a verdict event: no ClientHello came in time
	// (or the socket connected again), the agent stopped, or too many calls
	// were pending to keep waiting.
	TimedOut, Stopped, TrackingFull uint64
	// PendingNow is the number of calls awaiting their ClientHello.
	PendingNow uint64
	// Findings counts the calls carrying each finding, by Finding: each
	// connect and tls event once (a verdict event repeats its connect's,
	// and is not counted again).
	Findings [NumFindings]uint64
}

// Stage gives every event its verdict. A call that only a TLS server name
// can allow is pending on its connect; the stage remembers it by socket
// cookie until its tls event brings the final verdict, or, when no
// ClientHello comes in time, closes it with a verdict event of its own.
//
// JudgeBatch and Expire are for one goroutine, the pipeline's; Stats may
// be called from any.
type Stage struct {
	cfg   StageConfig
	log   *slog.Logger
	rules *findingRules

	// pending holds the calls awaiting their ClientHello in a list ordered
	// by when they began to wait, so that the oldest are found first both
	// to expire and to make room. Its slots are reused: steady state does
	// not allocate.
	pending    map[uint64]int32 // cookie to slot
	slots      []pendingCall
	head, tail int32 // oldest and newest slot; -1 when none
	free       int32 // first free slot, linked through next; -1 when none

	// dnsAllowed remembers the DNS names that allowed connects: their tls
	// events name the server by SNI only, and must not turn a call a dns
	// rule allowed into a violation.
	dnsAllowed recentNames

	warnedFull bool

	allowed, violation, unscoped, pendingVerdicts, wouldViolate atomic.Uint64
	closed                                                      [numCauses]atomic.Uint64 // pending calls closed, by cause
	pendingNow                                                  atomic.Int64
	findings                                                    [NumFindings]atomic.Uint64
}

type pendingCall struct {
	ev         enrich.Event // the connect, copied into its verdict event
	judgement  Judgement
	since      time.Time
	prev, next int32
}

// NewStage returns a Stage.
func NewStage(cfg StageConfig) *Stage {
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = 10 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 65536
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Stage{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "policy"),
		rules:      newFindingRules(cfg.Findings),
		pending:    make(map[uint64]int32),
		head:       -1,
		tail:       -1,
		free:       -1,
		dnsAllowed: newRecentNames(cfg.MaxPending),
	}
}

// Stats returns the counts so far.
func (s *Stage) Stats() StageStats {
	return StageStats{
		Allowed:      s.allowed.Load(),
		Violation:    s.violation.Load(),
		Unscoped:     s.unscoped.Load(),
		Pending:      s.pendingVerdicts.Load(),
		WouldViolate: s.wouldViolate.Load(),
		TimedOut:     s.closed[CauseNoHello].Load(),
		Stopped:      s.closed[CauseStopped].Load(),
		TrackingFull: s.closed[CauseTrackingFull].Load(),
		PendingNow:   uint64(max(s.pendingNow.Load(), 0)),
		Findings:     s.findingCounts(),
	}
}

func (s *Stage) findingCounts() (n [NumFindings]uint64) {
	for f := range n {
		n[f] = s.findings[f].Load()
	}
	return n
}

// JudgeBatch appends to out one Event per event of in, with its verdict,
// and a verdict event for each pending call it had to close to make room.
// now is when the batch is judged; pending calls wait from then. It takes
// the policies in force once per batch, so a reload applies from the next
// batch on. Once warm it does not allocate.
func (s *Stage) JudgeBatch(in []enrich.Event, out []Event, now time.Time) []Event {
	m := s.cfg.Policies.Current()
	for i := range in {
		out = append(out, Event{Event: in[i], Findings: s.rules.find(&in[i])})
		if f := out[len(out)-1].Findings; f != 0 && in[i].Kind != collector.KindVerdict {
			s.countFindings(f)
		}
		if m == nil {
			continue
		}
		switch in[i].Kind {
		case collector.KindConnect:
			out = s.connect(m, out, now)
		case collector.KindTLS:
			s.tls(m, &out[len(out)-1])
		}
	}
	return out
}

// connect judges the last event of out.
func (s *Stage) connect(m *Matcher, out []Event, now time.Time) []Event {
	ev := &out[len(out)-1]
	// A connect that was not established sends no ClientHello: a call only
	// an sni rule could allow is a violation at once.
	names := Names{SNIFinal: ev.Outcome != collector.OutcomeEstablished}
	if ev.NameSource == enrich.NameSourceDNS {
		names.DNS = ev.DstName
	}
	m.Judge(&ev.Event, names, &ev.Scope)
	s.count(&ev.Scope)
	ev.Scope.countHit(true, true)
	j := &ev.Scope
	if j.Verdict == Allowed && j.Via == ViaDNS || j.Staged.Verdict == Allowed && j.Staged.Via == ViaDNS {
		s.dnsAllowed.put(ev.Cookie, names.DNS)
	}
	// A call waits for its ClientHello while its verdict, or the staged
	// outcome beside it, is pending.
	if j.Verdict == Pending || j.Staged.Verdict == Pending {
		return s.await(out, len(out)-1, now)
	}
	return out
}

// tls judges a ClientHello with every name known of its connection: a call
// allowed by a cidr or dns rule on its connect stays allowed, since rules
// are ORed and the tls event carries the same destination.
func (s *Stage) tls(m *Matcher, ev *Event) {
	names := Names{SNIFinal: true}
	switch {
	case ev.Hello != nil:
		names.SNI = ev.Hello.SNI
	case ev.NameSource == enrich.NameSourceSNI:
		names.SNI = ev.DstName
	}
	if ev.NameSource == enrich.NameSourceDNS {
		names.DNS = ev.DstName
	}
	// The rule that allows a pending call counts it here; one that
	// allowed it on its connect counted it then.
	var wasPending, stagedPending bool
	if slot, ok := s.pending[ev.Cookie]; ok {
		pj := &s.slots[slot].judgement
		if dns := pj.Names.DNS; dns != "" {
			names.DNS = dns
		}
		wasPending, stagedPending = pj.Verdict == Pending, pj.Staged.Verdict == Pending
		s.forget(slot)
	} else if dns, ok := s.dnsAllowed.get(ev.Cookie); ok {
		// Kept, not deleted: a retried handshake sends a second ClientHello.
		names.DNS = dns
	}
	m.Judge(&ev.Event, names, &ev.Scope)
	s.count(&ev.Scope)
	ev.Scope.countHit(wasPending, stagedPending)
}

// await remembers the pending connect out[i] until its ClientHello comes.
func (s *Stage) await(out []Event, i int, now time.Time) []Event {
	cookie := out[i].Cookie
	if slot, ok := s.pending[cookie]; ok {
		// The socket connected again, so its earlier connection ended
		// without the ClientHello that would have settled it.
		out = s.close(out, slot, now, CauseNoHello, now.Sub(s.slots[slot].since))
	} else if len(s.pending) >= s.cfg.MaxPending {
		// The oldest call is the least likely to send a ClientHello still:
		// most send it within a round trip of the connect.
		if !s.warnedFull {
			s.warnedFull = true
			s.log.Warn("too many calls await their TLS ClientHello; judging the oldest without it",
				"max_pending", s.cfg.MaxPending)
		}
		out = s.close(out, s.head, now, CauseTrackingFull, now.Sub(s.slots[s.head].since))
	}

	slot := s.alloc()
	c := &s.slots[slot]
	c.ev = out[i].Event
	c.judgement = out[i].Scope
	c.since = now
	c.prev, c.next = s.tail, -1
	if s.tail >= 0 {
		s.slots[s.tail].next = slot
	} else {
		s.head = slot
	}
	s.tail = slot
	s.pending[cookie] = slot
	s.pendingNow.Add(1)
	return out
}

// Expire closes the calls pending for PendingTimeout or longer with a
// verdict event each, a violation (would_violate for staged scopes),
// appended to out; with all, it closes
// every pending call, as the agent stops. Call it every second or so.
func (s *Stage) Expire(out []Event, now time.Time, all bool) []Event {
	for s.head >= 0 {
		waited := now.Sub(s.slots[s.head].since)
		if waited >= s.cfg.PendingTimeout {
			out = s.close(out, s.head, now, CauseNoHello, s.cfg.PendingTimeout)
		} else if all {
			out = s.close(out, s.head, now, CauseStopped, waited)
		} else {
			// The list is ordered by since: the rest are younger.
			break
		}
	}
	s.rearmWarning()
	return out
}

// rearmWarning lets the next time tracking fills be logged again, once it
// has drained well below full.
func (s *Stage) rearmWarning() {
	if s.warnedFull && len(s.pending) < s.cfg.MaxPending/2 {
		s.warnedFull = false
	}
}

// close judges a pending call a violation in a verdict event that stands
// for its connect, and forgets it. What was pending is closed: the verdict
// becomes a violation, or would_violate when only staged scopes bind the
// caller, and a pending staged outcome beside it would_violate; a verdict
// that was final on the connect stands, and is not counted again.
func (s *Stage) close(out []Event, slot int32, now time.Time, cause Cause, wait time.Duration) []Event {
	c := &s.slots[slot]
	out = append(out, Event{Event: c.ev, Findings: s.rules.find(&c.ev)})
	ev := &out[len(out)-1]
	ev.Kind = collector.KindVerdict
	ev.Time = now.UnixNano()
	pj := &c.judgement
	ev.Scope = Judgement{
		Scopes: pj.Scopes,
		Names:  Names{DNS: pj.Names.DNS, SNIFinal: true},
		Wait:   wait,
		// Judged by the policies that made it pending, which may since
		// have been replaced.
		PolicyVersion: pj.PolicyVersion,
		Mode:          pj.Mode,
	}
	j := &ev.Scope
	if pj.Verdict == Pending {
		j.Verdict, j.Cause = Violation, cause
		if pj.Mode == Audit {
			j.Verdict = WouldViolate
		}
		s.countVerdict(j.Verdict)
	} else {
		j.Verdict, j.Rule, j.Via, j.CalleeUnknown = pj.Verdict, pj.Rule, pj.Via, pj.CalleeUnknown
	}
	if pj.Staged.Verdict != 0 {
		j.Staged = pj.Staged
		if pj.Staged.Verdict == Pending {
			j.Staged.Verdict, j.Staged.Cause = WouldViolate, cause
			s.countVerdict(WouldViolate)
		}
	}
	s.closed[cause].Add(1)
	s.forget(slot)
	return out
}

// forget unlinks a pending call and frees its slot.
func (s *Stage) forget(slot int32) {
	c := &s.slots[slot]
	delete(s.pending, c.ev.Cookie)
	if c.prev >= 0 {
		s.slots[c.prev].next = c.next
	} else {
		s.head = c.next
	}
	if c.next >= 0 {
		s.slots[c.next].prev = c.prev
	} else {
		s.tail = c.prev
	}
	// Drop the references to the process and pod, which may be gone.
	*c = pendingCall{next: s.free}
	s.free = slot
	s.pendingNow.Add(-1)
}

func (s *Stage) alloc() int32 {
	if s.free >= 0 {
		slot := s.free
		s.free = s.slots[slot].next
		return slot
	}
	s.slots = append(s.slots, pendingCall{})
	return int32(len(s.slots) - 1)
}

func (s *Stage) countFindings(set Findings) {
	for f := range NumFindings {
		if set.Has(f) {
			s.findings[f].Add(1)
		}
	}
}

// count counts a judgement's verdict, and its staged outcome when that is
// would_violate.
func (s *Stage) count(j *Judgement) {
	s.countVerdict(j.Verdict)
	if j.Staged.Verdict == WouldViolate {
		s.countVerdict(WouldViolate)
	}
}

func (s *Stage) countVerdict(v Verdict) {
	switch v {
	case Allowed:
		s.allowed.Add(1)
	case Violation:
		s.violation.Add(1)
	case Unscoped:
		s.unscoped.Add(1)
	case Pending:
		s.pendingVerdicts.Add(1)
	case WouldViolate:
		s.wouldViolate.Add(1)
	}
}

// recentNames maps the last n cookies put to their names. The oldest goes
// first: a ClientHello follows its connect within a round trip, so a name
// is needed only briefly. Unlike a cache that turns over generations, it
// allocates nothing once full.
type recentNames struct {
	index map[uint64]int32
	ring  []cookieName
	next  int32
	size  int32
}

type cookieName struct {
	cookie uint64
	name   string
}

func newRecentNames(n int) recentNames {
	return recentNames{index: make(map[uint64]int32), size: int32(n)}
}

func (r *recentNames) put(cookie uint64, name string) {
	if i, ok := r.index[cookie]; ok {
		r.ring[i].name = name
		return
	}
	if int32(len(r.ring)) < r.size {
		r.ring = append(r.ring, cookieName{})
	} else {
		delete(r.index, r.ring[r.next].cookie)
	}
	r.ring[r.next] = cookieName{cookie, name}
	r.index[cookie] = r.next
	r.next = (r.next + 1) % r.size
}

func (r *recentNames) get(cookie uint64) (string, bool) {
	i, ok := r.index[cookie]
	if !ok {
		return "", false
	}
	return r.ring[i].name, true
}
