package scope

import (
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/internal/gencache"
)

// Verdict is what a call's scope says of it.
type Verdict uint8

const (
	// Unscoped: no CallScope binds the caller.
	Unscoped Verdict = iota + 1
	// Allowed: a rule of a scope binding the caller allows the call.
	Allowed
	// Violation: scopes bind the caller and none allows the call.
	Violation
	// Pending: only a TLS server name still to come can allow the call.
	Pending
	// WouldViolate: staged (audit) scopes bind the caller and none allows
	// the call; it is no violation.
	WouldViolate
)

func (v Verdict) String() string {
	switch v {
	case Unscoped:
		return "unscoped"
	case Allowed:
		return "allowed"
	case Violation:
		return "violation"
	case Pending:
		return "pending"
	case WouldViolate:
		return "would_violate"
	}
	return "unknown"
}

// Names are the destination names known for a call.
type Names struct {
	DNS string // a name the caller resolved to the destination address
	SNI string // the server name of its TLS ClientHello
	// SNIFinal says no ClientHello can come any more: the call's TLS event
	// was seen, or the connection ended without one.
	SNIFinal bool
}

// Via says which kind of destination let a rule allow a call.
type Via uint8

const (
	ViaCIDR      Via = iota + 1 // the address is in a cidr
	ViaDNS                      // a name the caller resolved matches a dns pattern
	ViaSNI                      // the TLS server name matches an sni pattern
	ViaService                  // the callee is the Service a service rule names
	ViaNamespace                // the callee is in the namespace a namespace rule names
	ViaSpiffeID                 // the callee pod's SPIFFE ID matches a spiffeID pattern
)

// Judgement is the verdict on one call, and what it rests on. It holds no
// memory of its own: strings point into the compiled policies and the
// event's names.
type Judgement struct {
	Verdict Verdict
	// Scopes names the CallScopes binding the caller, comma-separated.
	Scopes string
	// Rule names the rule that allowed the call: "billing-egress/egress[0]".
	Rule string
	// Via says what the rule matched, for Allowed.
	Via Via
	// Names are the destination names the verdict considered.
	Names Names
	// CalleeUnknown says a rule that names callees by their identity in
	// the cluster (service, namespace, spiffeID) applied to the call, and
	// the callee could not be named.
	CalleeUnknown bool
	// Cause and Wait are set by a Stage that gives a final verdict without
	// waiting any longer for a call's TLS server name; see Cause.
	Cause Cause
	Wait  time.Duration
	// PolicyVersion names the policy set that judged the call; see Version.
	PolicyVersion string
	// Mode is Audit when only staged scopes bind the caller, so that the
	// verdict is theirs: Allowed, Pending or WouldViolate.
	Mode Mode
	// Staged is what the staged scopes binding the caller say of the call
	// when enforced scopes bind it too and give the verdict; zero when no
	// staged scope binds it beside them.
	Staged Staged
	// hit counts the calls the rule allowed; see Matcher.RuleHits.
	hit *atomic.Uint64
}

// Staged is the outcome of the staged scopes binding a caller, beside the
// verdict of the enforced ones: Allowed, Pending or WouldViolate. Like a
// Judgement, it points into the compiled policies.
type Staged struct {
	Verdict       Verdict
	Scopes        string // the staged scopes binding the caller
	Rule          string // the staged rule that allowed the call
	Via           Via
	CalleeUnknown bool
	// Cause is set, with the Judgement's Wait, when a Stage closed the
	// staged outcome without waiting any longer for the TLS server name.
	Cause Cause
	hit   *atomic.Uint64
}

// countHit counts the call as allowed by its rule, for the verdict and the
// staged outcome each.
func (j *Judgement) countHit(verdict, staged bool) {
	if verdict && j.Verdict == Allowed && j.hit != nil {
		j.hit.Add(1)
	}
	if staged && j.Staged.Verdict == Allowed && j.Staged.hit != nil {
		j.Staged.hit.Add(1)
	}
}

// Matcher judges calls against a set of policies, compiled once. It is
// meant for one goroutine (the pipeline's); build a new one to reload.
type Matcher struct {
	policies []compiledPolicy
	version  string
	// overflow counts the calls allowed by rules past MaxRuleHitSeries;
	// it and the rules' counters carry over from the Matcher replaced.
	overflow *atomic.Uint64
	// bindings caches which scopes bind a caller: callers are few and
	// come back, and matching every subject on every event would not do.
	bindings *gencache.Cache[callerKey, *binding]
	// last is the caller bound last and its binding: events come in runs
	// of one caller, and comparing its key costs less than hashing it.
	last struct {
		key callerKey
		b   *binding
	}
}

type compiledPolicy struct {
	name    string
	mode    Mode
	subject Subject
	rules   []compiledRule
}

type compiledRule struct {
	name string
	// hits counts the calls the rule allowed: its own counter for the
	// first MaxRuleHitSeries rules, the Matcher's overflow past them.
	hits     *atomic.Uint64
	own      bool // hits is the rule's own
	prefixes []netip.Prefix
	dns, sni []string // lowercased patterns
	// By the callee's identity.
	services   []serviceName
	namespaces []string
	spiffeIDs  []string // globs
	ports      []PortRange
}

type serviceName struct{ namespace, name string }

func (r *compiledRule) byCallee() bool {
	return len(r.services)+len(r.namespaces)+len(r.spiffeIDs) > 0
}

// callee says whether c is among the rule's callees, and how.
func (r *compiledRule) callee(c *enrich.Callee) Via {
	for _, s := range r.services {
		if c.Service == s.name && c.Namespace == s.namespace {
			return ViaService
		}
	}
	for _, ns := range r.namespaces {
		if c.Namespace == ns {
			return ViaNamespace
		}
	}
	for _, g := range r.spiffeIDs {
		if c.Identity != "" && globMatches(g, c.Identity) {
			return ViaSpiffeID
		}
	}
	return 0
}

// binding is the scopes binding a caller: the enforced ones and the
// staged ones.
type binding struct {
	scopes       string
	rules        []*compiledRule
	stagedScopes string
	stagedRules  []*compiledRule
}

var unscoped = &binding{}

// callerKey is what a binding depends on. Its strings are shared with the
// enrichment caches, so building it does not allocate; a pod object is
// replaced, not changed, when its labels change.
type callerKey struct {
	pod                        *enrich.Pod
	identity, unit, exe, group string
}

// Compile prepares policies for judging. The policies are not kept.
func Compile(policies []Policy) *Matcher {
	m := &Matcher{bindings: gencache.New[callerKey, *binding](8192), version: Version(policies), overflow: new(atomic.Uint64)}
	// The counters come in one block: a reload makes no litter of them.
	n := 0
	for _, p := range policies {
		n += len(p.Egress)
	}
	counters := make([]atomic.Uint64, min(n, MaxRuleHitSeries))
	series := 0
	for _, p := range policies {
		cp := compiledPolicy{name: p.Name, mode: p.Mode, subject: p.Subject}
		for i, r := range p.Egress {
			cr := compiledRule{name: p.Name + "/egress[" + strconv.Itoa(i) + "]", ports: r.Ports, hits: m.overflow}
			if series < MaxRuleHitSeries {
				cr.hits, cr.own = &counters[series], true
				series++
			}
			for _, to := range r.To {
				switch {
				case to.CIDR.IsValid():
					cr.prefixes = append(cr.prefixes, to.CIDR)
				case to.DNS != "":
					cr.dns = append(cr.dns, strings.ToLower(to.DNS))
				case to.SNI != "":
					cr.sni = append(cr.sni, strings.ToLower(to.SNI))
				case to.Service != "":
					ns, name, _ := strings.Cut(to.Service, "/")
					cr.services = append(cr.services, serviceName{ns, name})
				case to.Namespace != "":
					cr.namespaces = append(cr.namespaces, to.Namespace)
				case to.SpiffeID != "":
					cr.spiffeIDs = append(cr.spiffeIDs, to.SpiffeID)
				}
			}
			cp.rules = append(cp.rules, cr)
		}
		m.policies = append(m.policies, cp)
	}
	return m
}

// Len is the number of policies compiled.
func (m *Matcher) Len() int { return len(m.policies) }

// Judge judges ev's call. On a cached caller it does not allocate.
func (m *Matcher) Judge(ev *enrich.Event, names Names, j *Judgement) {
	b := m.bind(ev)
	*j = Judgement{Scopes: b.scopes, Names: names, PolicyVersion: m.version}
	switch {
	case b.scopes != "":
		j.Verdict, j.Rule, j.Via, j.CalleeUnknown, j.hit = judgeRules(b.rules, ev, names)
		if b.stagedScopes != "" {
			st := &j.Staged
			st.Scopes = b.stagedScopes
			st.Verdict, st.Rule, st.Via, st.CalleeUnknown, st.hit = judgeRules(b.stagedRules, ev, names)
			if st.Verdict == Violation {
				st.Verdict = WouldViolate
			}
		}
	case b.stagedScopes != "":
		j.Scopes, j.Mode = b.stagedScopes, Audit
		j.Verdict, j.Rule, j.Via, j.CalleeUnknown, j.hit = judgeRules(b.stagedRules, ev, names)
		if j.Verdict == Violation {
			j.Verdict = WouldViolate
		}
	default:
		j.Verdict = Unscoped
	}
}

// judgeRules gives the verdict of rules on a call: Allowed, with the rule and
// what it matched, Pending or Violation.
func judgeRules(rules []*compiledRule, ev *enrich.Event, names Names) (v Verdict, rule string, via Via, calleeUnknown bool, hit *atomic.Uint64) {
	dst, port := ev.Dst.Addr(), ev.Dst.Port()
	pending := false
	for _, r := range rules {
		if !portAllowed(r.ports, port) {
			continue
		}
		for _, p := range r.prefixes {
			if p.Contains(dst) {
				return Allowed, r.name, ViaCIDR, calleeUnknown, r.hits
			}
		}
		if names.DNS != "" && anyHostMatches(r.dns, names.DNS) {
			return Allowed, r.name, ViaDNS, calleeUnknown, r.hits
		}
		if r.byCallee() {
			if ev.Callee == nil {
				calleeUnknown = true
			} else if via := r.callee(ev.Callee); via != 0 {
				return Allowed, r.name, via, false, r.hits
			}
		}
		if len(r.sni) > 0 {
			if names.SNI != "" && anyHostMatches(r.sni, names.SNI) {
				return Allowed, r.name, ViaSNI, calleeUnknown, r.hits
			}
			if names.SNI == "" && !names.SNIFinal {
				pending = true
			}
		}
	}
	if pending {
		return Pending, "", 0, calleeUnknown, nil
	}
	return Violation, "", 0, calleeUnknown, nil
}

func (m *Matcher) bind(ev *enrich.Event) *binding {
	k := callerKey{pod: ev.Pod, identity: ev.Identity, unit: ev.Cgroup.Unit, group: ev.CgroupPath}
	if ev.Process != nil {
		k.exe = ev.Process.Exe
	}
	if m.last.b != nil && m.last.key == k {
		return m.last.b
	}
	b, ok := m.bindings.Get(k)
	if !ok {
		b = m.computeBinding(ev, &k)
		m.bindings.Put(k, b)
	}
	m.last.key, m.last.b = k, b
	return b
}

func (m *Matcher) computeBinding(ev *enrich.Event, k *callerKey) *binding {
	var b *binding
	for i := range m.policies {
		p := &m.policies[i]
		if !subjectMatches(&p.subject, ev, k) {
			continue
		}
		if b == nil {
			b = &binding{}
		}
		scopes, rules := &b.scopes, &b.rules
		if p.mode == Audit {
			scopes, rules = &b.stagedScopes, &b.stagedRules
		}
		if *scopes == "" {
			*scopes = p.name
		} else {
			*scopes += "," + p.name
		}
		for j := range p.rules {
			*rules = append(*rules, &p.rules[j])
		}
	}
	if b == nil {
		return unscoped
	}
	return b
}

// subjectMatches: every selector given must match; a selector whose fact
// is unknown does not match, so an unknown caller is never bound by a
// scope meant for someone else.
func subjectMatches(s *Subject, ev *enrich.Event, k *callerKey) bool {
	pod := ev.Pod
	if s.Namespace != "" && (pod == nil || pod.Namespace != s.Namespace) {
		return false
	}
	if s.ServiceAccount != "" && (pod == nil || pod.ServiceAccount != s.ServiceAccount) {
		return false
	}
	for key, v := range s.PodLabels {
		if pod == nil {
			return false
		}
		if got, ok := pod.Labels[key]; !ok || got != v {
			return false
		}
	}
	if s.SpiffeID != "" && (pod == nil || !globMatches(s.SpiffeID, k.identity)) {
		return false
	}
	if s.SystemdUnit != "" && (k.unit == "" || !globMatches(s.SystemdUnit, k.unit)) {
		return false
	}
	if s.Exe != "" && (k.exe == "" || !globMatches(s.Exe, k.exe)) {
		return false
	}
	if s.Cgroup != "" && (k.group == "" || !globMatches(s.Cgroup, k.group)) {
		return false
	}
	return true
}

func portAllowed(ranges []PortRange, port uint16) bool {
	if len(ranges) == 0 {
		return true
	}
	for _, r := range ranges {
		if port >= r.From && port <= r.To {
			return true
		}
	}
	return false
}
