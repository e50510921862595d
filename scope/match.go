package scope

import (
	"net/netip"
	"strconv"
	"strings"
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
}

// Matcher judges calls against a set of policies, compiled once. It is
// meant for one goroutine (the pipeline's); build a new one to reload.
type Matcher struct {
	policies []compiledPolicy
	version  string
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
	subject Subject
	rules   []compiledRule
}

type compiledRule struct {
	name     string
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

type binding struct {
	scopes string
	rules  []*compiledRule
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
	m := &Matcher{bindings: gencache.New[callerKey, *binding](8192), version: Version(policies)}
	for _, p := range policies {
		cp := compiledPolicy{name: p.Name, subject: p.Subject}
		for i, r := range p.Egress {
			cr := compiledRule{name: p.Name + "/egress[" + strconv.Itoa(i) + "]", ports: r.Ports}
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
	if len(b.scopes) == 0 {
		j.Verdict = Unscoped
		return
	}
	dst, port := ev.Dst.Addr(), ev.Dst.Port()
	pending := false
	for _, r := range b.rules {
		if !portAllowed(r.ports, port) {
			continue
		}
		for _, p := range r.prefixes {
			if p.Contains(dst) {
				j.Verdict, j.Rule, j.Via = Allowed, r.name, ViaCIDR
				return
			}
		}
		if names.DNS != "" && anyHostMatches(r.dns, names.DNS) {
			j.Verdict, j.Rule, j.Via = Allowed, r.name, ViaDNS
			return
		}
		if r.byCallee() {
			if ev.Callee == nil {
				j.CalleeUnknown = true
			} else if via := r.callee(ev.Callee); via != 0 {
				j.Verdict, j.Rule, j.Via, j.CalleeUnknown = Allowed, r.name, via, false
				return
			}
		}
		if len(r.sni) > 0 {
			if names.SNI != "" && anyHostMatches(r.sni, names.SNI) {
				j.Verdict, j.Rule, j.Via = Allowed, r.name, ViaSNI
				return
			}
			if names.SNI == "" && !names.SNIFinal {
				pending = true
			}
		}
	}
	if pending {
		j.Verdict = Pending
		return
	}
	j.Verdict = Violation
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
			b = &binding{scopes: p.name}
		} else {
			b.scopes += "," + p.name
		}
		for j := range p.rules {
			b.rules = append(b.rules, &p.rules[j])
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
