package scope

import (
	"strconv"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

// Finding is one mark of poor machine-identity hygiene on a call, from a
// fixed catalogue named after the OWASP Non-Human Identities Top 10.
// Findings do not depend on verdicts: an allowed call can carry one.
type Finding uint8

const (
	// HumanUse: a person's session (a controlling terminal, or an audit
	// login uid) made a call under a workload's identity (a pod's or a
	// systemd unit's): kubectl exec -it, docker exec -it, or ssh then
	// sudo -u svc.
	HumanUse Finding = iota
	// Plaintext: the first data of an established connect to a port where
	// TLS is expected was no TLS handshake.
	Plaintext
	// CleartextProtocol: an established connect to a protocol that
	// carries credentials in clear by design (FTP, Telnet, POP3, IMAP,
	// LDAP by default).
	CleartextProtocol
	// LegacyTLS: the ClientHello offers nothing above TLS 1.1, or the
	// server chose a version below 1.2.
	LegacyTLS
	// NoSNI: a TLS ClientHello without a server name, which name-based
	// scopes cannot judge.
	NoSNI
	// CrossEnvironment: caller and callee namespaces carry different
	// values of the environment label.
	CrossEnvironment

	NumFindings // the number of findings; keep last
)

// FindingInfo is what the catalogue says of a finding.
type FindingInfo struct {
	ID    string // the findings[].id of events, and the metric's label
	OWASP string // the OWASP NHI Top 10 risk (2025), "" for none
	// Summary is what the README's catalogue says; an event's reason
	// says more (see AppendFindingReason).
	Summary string
}

// Catalogue describes each finding, by Finding.
var Catalogue = [NumFindings]FindingInfo{
	HumanUse:          {"human_use", "NHI10", "a person's interactive session called under a workload's identity"},
	Plaintext:         {"plaintext", "NHI4", "the first data sent to a port where TLS is expected was no TLS handshake"},
	CleartextProtocol: {"cleartext_protocol", "NHI4", "a call to a protocol that carries credentials in clear"},
	LegacyTLS:         {"legacy_tls", "NHI4", "TLS below 1.2 offered or chosen"},
	NoSNI:             {"no_sni", "", "a TLS ClientHello without a server name"},
	CrossEnvironment:  {"cross_environment", "NHI8", "a call between namespaces of different environments"},
}

// Findings is a set of findings, one bit each.
type Findings uint16

// Has reports whether f is in the set.
func (s Findings) Has(f Finding) bool { return s&(1<<f) != 0 }

func (s *Findings) add(f Finding) { *s |= 1 << f }

// DefaultCleartextPorts are FTP, Telnet, POP3, IMAP and LDAP.
var DefaultCleartextPorts = []uint16{21, 23, 110, 143, 389}

// FindingsConfig says how to find what.
type FindingsConfig struct {
	// CleartextPorts are where cleartext_protocol applies. nil means
	// DefaultCleartextPorts; empty, none.
	CleartextPorts []uint16
	// Environment gives the value of a namespace's environment label,
	// and whether it has one; nil leaves cross_environment out.
	Environment func(namespace string) (string, bool)
}

// findingRules finds the findings of calls. It is used by the pipeline's
// goroutine only.
type findingRules struct {
	cleartext   map[uint16]bool
	environment func(string) (string, bool)
}

func newFindingRules(cfg FindingsConfig) *findingRules {
	ports := cfg.CleartextPorts
	if ports == nil {
		ports = DefaultCleartextPorts
	}
	r := &findingRules{cleartext: make(map[uint16]bool, len(ports)), environment: cfg.Environment}
	for _, p := range ports {
		r.cleartext[p] = true
	}
	return r
}

// find gives the findings of a call; none for events that are not calls.
func (r *findingRules) find(ev *enrich.Event) Findings {
	var s Findings
	switch ev.Kind {
	case collector.KindConnect, collector.KindVerdict:
		if ev.Plaintext {
			s.add(Plaintext)
		}
		if ev.Outcome == collector.OutcomeEstablished && r.cleartext[ev.Dst.Port()] {
			s.add(CleartextProtocol)
		}
	case collector.KindTLS:
		if h := ev.Hello; h != nil {
			if v := h.MaxVersion(); v != 0 && v < tls12 {
				s.add(LegacyTLS)
			}
			if h.SNI == "" && !h.Truncated {
				s.add(NoSNI)
			}
		}
		if sh := ev.ServerHello; sh != nil && !sh.HelloRetry && sh.Version != 0 && sh.Version < tls12 {
			s.add(LegacyTLS)
		}
	default:
		return 0
	}
	if humanUse(ev) {
		s.add(HumanUse)
	}
	if r.crossEnvironment(ev) {
		s.add(CrossEnvironment)
	}
	return s
}

const tls12 = 0x0303

// humanUse: a session's marks on a caller that runs as a workload, in a
// pod's cgroup or a systemd unit's. A caller whose process the kernel did
// not name (pid 0) has no marks to read.
func humanUse(ev *enrich.Event) bool {
	if ev.PID == 0 || !ev.TTY && ev.LoginUID == collector.LoginUIDUnset {
		return false
	}
	return ev.Pod != nil || ev.Cgroup.PodUID != "" || ev.Cgroup.Unit != ""
}

// crossEnvironment: both namespaces known, both labelled, differently.
func (r *findingRules) crossEnvironment(ev *enrich.Event) bool {
	if r.environment == nil || ev.Pod == nil || ev.Callee == nil || ev.Callee.Namespace == "" ||
		ev.Pod.Namespace == ev.Callee.Namespace {
		return false
	}
	from, ok := r.environment(ev.Pod.Namespace)
	if !ok {
		return false
	}
	to, ok := r.environment(ev.Callee.Namespace)
	return ok && from != to
}

// AppendFindingReason appends the sentence that says why ev carries f,
// for a person; with room in dst it does not allocate.
func AppendFindingReason(dst []byte, ev *Event, f Finding) []byte {
	switch f {
	case HumanUse:
		dst = append(dst, "a person's session "...)
		switch {
		case ev.TTY && ev.LoginUID != collector.LoginUIDUnset:
			dst = append(dst, "(a controlling terminal, login uid "...)
			dst = strconv.AppendUint(dst, uint64(ev.LoginUID), 10)
			dst = append(dst, ')')
		case ev.TTY:
			dst = append(dst, "(a controlling terminal)"...)
		default:
			dst = append(dst, "(login uid "...)
			dst = strconv.AppendUint(dst, uint64(ev.LoginUID), 10)
			dst = append(dst, ')')
		}
		dst = append(dst, " called as "...)
		switch {
		case ev.Identity != "":
			dst = append(dst, ev.Identity...)
		case ev.Cgroup.PodUID != "":
			dst = append(dst, "pod "...)
			dst = append(dst, ev.Cgroup.PodUID...)
		default:
			dst = append(dst, "unit:"...)
			dst = append(dst, ev.Cgroup.Unit...)
		}
	case Plaintext:
		dst = append(dst, "the first data sent to port "...)
		dst = strconv.AppendUint(dst, uint64(ev.Dst.Port()), 10)
		dst = append(dst, ", where TLS is expected, was no TLS handshake"...)
	case CleartextProtocol:
		dst = append(dst, "port "...)
		dst = strconv.AppendUint(dst, uint64(ev.Dst.Port()), 10)
		dst = append(dst, " carries credentials in clear"...)
	case LegacyTLS:
		if h := ev.Hello; h != nil && h.MaxVersion() < tls12 {
			dst = append(dst, "the ClientHello offers "...)
			dst = appendTLSVersion(dst, h.MaxVersion())
			dst = append(dst, " at most"...)
		} else if sh := ev.ServerHello; sh != nil {
			dst = append(dst, "the server chose "...)
			dst = appendTLSVersion(dst, sh.Version)
		}
	case NoSNI:
		dst = append(dst, "the ClientHello names no server"...)
	case CrossEnvironment:
		dst = append(dst, "namespace "...)
		dst = append(dst, ev.Pod.Namespace...)
		dst = append(dst, " called namespace "...)
		dst = append(dst, ev.Callee.Namespace...)
		dst = append(dst, " of another environment"...)
	}
	return dst
}

// appendTLSVersion writes 0x0301 as "TLS 1.0", 0x0300 as "SSL 3.0".
func appendTLSVersion(dst []byte, v uint16) []byte {
	if v < 0x0301 {
		return append(dst, "SSL 3.0"...)
	}
	dst = append(dst, "TLS 1."...)
	return strconv.AppendUint(dst, uint64(v-0x0301), 10)
}
