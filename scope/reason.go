package scope

import (
	"strconv"
	"strings"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

// Cause says why a Stage gave a violation without waiting any longer for a
// call's TLS server name. Every other verdict rests on the rules alone.
type Cause uint8

const (
	// CauseRules: the rules judged the call on the names known.
	CauseRules Cause = iota
	// CauseNoHello: no ClientHello came within the pending timeout, or the
	// socket connected again without one. Wait is how long the stage waited.
	CauseNoHello
	// CauseStopped: the agent stopped while the call was pending. Wait is
	// how long it had been pending.
	CauseStopped
	// CauseTrackingFull: too many calls were pending to keep waiting for
	// this one, the oldest. Wait is how long it had been pending.
	CauseTrackingFull

	numCauses // the number of causes; keep last
)

// AppendReason appends to dst the sentence that explains ev's verdict to a
// person, the reason of the event's scope object: nothing when there is no
// verdict or nothing to add. With room in dst it does not allocate, so the
// encoder can call it for every event.
func AppendReason(dst []byte, ev *Event) []byte {
	return appendReason(dst, ev, &ev.Scope)
}

// AppendStagedReason appends to dst the sentence that explains the staged
// outcome beside ev's verdict (ev.Scope.Staged), as AppendReason does the
// verdict: nothing when there is none.
func AppendStagedReason(dst []byte, ev *Event) []byte {
	st := &ev.Scope.Staged
	j := Judgement{
		Verdict: st.Verdict, Scopes: st.Scopes, Rule: st.Rule, Via: st.Via, CalleeUnknown: st.CalleeUnknown,
		Names: ev.Scope.Names, Cause: st.Cause, Wait: ev.Scope.Wait,
	}
	return appendReason(dst, ev, &j)
}

func appendReason(dst []byte, ev *Event, j *Judgement) []byte {
	switch j.Verdict {
	case Unscoped:
		return append(dst, "no CallScope binds this caller"...)
	case Pending:
		return append(dst, "allowed only if the TLS server name matches an sni rule"...)
	case Allowed:
		return appendAllowed(dst, ev, j)
	case Violation, WouldViolate:
		// Worded alike: the verdict says whether the scopes are enforced.
		return appendViolation(dst, ev, j)
	}
	return dst
}

func appendAllowed(dst []byte, ev *Event, j *Judgement) []byte {
	if j.Rule == "" {
		return dst
	}
	dst = append(dst, "allowed by "...)
	dst = append(dst, j.Rule...)
	switch j.Via {
	case ViaCIDR:
		dst = append(dst, " for "...)
		dst = ev.Dst.AppendTo(dst)
	case ViaDNS:
		dst = append(dst, " for DNS name "...)
		dst = append(dst, j.Names.DNS...)
	case ViaSNI:
		dst = append(dst, " for TLS server name "...)
		dst = append(dst, j.Names.SNI...)
	case ViaService, ViaNamespace, ViaSpiffeID:
		dst = append(dst, " for "...)
		dst = appendCallee(dst, ev.Callee, j.Via)
	}
	return dst
}

// appendCallee names the callee as the rule that matched it saw it:
// "Service payments/ledger", "namespace payments", "SPIFFE ID spiffe://...".
func appendCallee(dst []byte, c *enrich.Callee, via Via) []byte {
	if c == nil {
		return dst
	}
	switch {
	case via == ViaNamespace:
		dst = append(dst, "namespace "...)
		return append(dst, c.Namespace...)
	case via == ViaSpiffeID:
		dst = append(dst, "SPIFFE ID "...)
		return append(dst, c.Identity...)
	case c.Service != "":
		dst = append(dst, "Service "...)
	default:
		dst = append(dst, "pod "...)
		dst = append(dst, c.Namespace...)
		dst = append(dst, '/')
		return append(dst, c.Pod...)
	}
	dst = append(dst, c.Namespace...)
	dst = append(dst, '/')
	return append(dst, c.Service...)
}

func appendViolation(dst []byte, ev *Event, j *Judgement) []byte {
	switch j.Cause {
	case CauseNoHello:
		dst = append(dst, "no TLS ClientHello named an allowed server within "...)
		return appendDuration(dst, j.Wait)
	case CauseStopped:
		dst = append(dst, "the agent stopped before a TLS ClientHello named an allowed server (pending for "...)
		dst = appendDuration(dst, j.Wait)
		return append(dst, ')')
	case CauseTrackingFull:
		dst = append(dst, "too many calls awaited their TLS ClientHello to keep awaiting this one (pending for "...)
		dst = appendDuration(dst, j.Wait)
		return append(dst, ')')
	}

	dst = append(dst, "no egress rule of "...)
	dst = appendScopes(dst, j.Scopes)
	dst = append(dst, " allows "...)
	dst = ev.Dst.AppendTo(dst)

	dns, sni := j.Names.DNS, j.Names.SNI
	noSNI := ev.Kind == collector.KindTLS && sni == ""
	dst = appendNamesConsidered(dst, dns, sni, noSNI)
	// What the cluster says of the callee, or that it could say nothing
	// where a rule needed it.
	switch {
	case j.CalleeUnknown:
		dst = append(dst, "; the callee is not known as a Service or pod of the cluster"...)
	case ev.Callee != nil:
		dst = append(dst, "; the callee is "...)
		dst = appendCallee(dst, ev.Callee, 0)
	}
	return dst
}

// appendNamesConsidered writes the destination names a violation was
// judged with, in parentheses.
func appendNamesConsidered(dst []byte, dns, sni string, noSNI bool) []byte {
	switch {
	case dns != "" && sni != "" && !strings.EqualFold(dns, sni):
		dst = append(dst, " (DNS name "...)
		dst = append(dst, dns...)
		dst = append(dst, ", TLS server name "...)
		dst = append(dst, sni...)
		dst = append(dst, ')')
	case dns != "" || sni != "":
		name := dns
		if name == "" {
			name = sni
		}
		dst = append(dst, " ("...)
		dst = append(dst, name...)
		if noSNI {
			dst = append(dst, "; the ClientHello named no server"...)
		}
		dst = append(dst, ')')
	case noSNI:
		dst = append(dst, " (the ClientHello named no server)"...)
	}
	return dst
}

// appendScopes writes "a", "a or b", "a, b or c".
func appendScopes(dst []byte, scopes string) []byte {
	n := strings.Count(scopes, ",")
	for i := 0; ; i++ {
		name, rest, more := strings.Cut(scopes, ",")
		dst = append(dst, name...)
		if !more {
			return dst
		}
		if i == n-1 {
			dst = append(dst, " or "...)
		} else {
			dst = append(dst, ", "...)
		}
		scopes = rest
	}
}

// appendDuration writes d to the millisecond: "10s", "1.5s", "250ms".
// time.Duration.String would allocate, and write a minute as "1m0s".
func appendDuration(dst []byte, d time.Duration) []byte {
	d = d.Round(time.Millisecond)
	if d < time.Second {
		dst = strconv.AppendInt(dst, d.Milliseconds(), 10)
		return append(dst, "ms"...)
	}
	dst = strconv.AppendFloat(dst, d.Seconds(), 'f', -1, 64)
	return append(dst, 's')
}
