package learn

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// Judgement is what Judge found of one call event.
type Judgement struct {
	Line    int    // of the input, from 1; 0 for a verdict closing a pending call
	Kind    string // connect, tls or verdict
	Verdict scope.Verdict
	Reason  string
}

// Judge replays the calls of events (JSON lines) through a scope.Stage
// with policies, as the agent would have judged them, and returns every
// final verdict: a connect's (unless pending), a tls event's, and those of
// the pending calls it closes, at their timeout or at the end. It reads
// the lines with encoding/json, apart from the reader Learner uses, and
// skips what does not decode. It is meant to check drafts against the
// window they were learnt from, not for speed.
func Judge(policies []scope.Policy, r io.Reader) ([]Judgement, error) {
	st := scope.NewStage(scope.StageConfig{Policies: scope.NewPolicies(scope.Compile(policies))})
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, MaxLine+2)
	var out []Judgement
	var judged []scope.Event
	var last time.Time
	keep := func(evs []scope.Event, line int) {
		for i := range evs {
			e := &evs[i]
			if e.Scope.Verdict == 0 || e.Scope.Verdict == scope.Pending {
				continue
			}
			j := Judgement{Line: line, Kind: e.Kind.String(), Verdict: e.Scope.Verdict}
			if e.Kind == collector.KindVerdict {
				j.Line = 0
			}
			j.Reason = string(scope.AppendReason(nil, e))
			out = append(out, j)
		}
	}
	for n := 1; sc.Scan(); n++ {
		ev, ok := enrichEvent(sc.Bytes())
		if !ok {
			continue
		}
		now := time.Unix(0, ev.Time)
		if now.After(last) {
			last = now
		}
		judged = st.Expire(judged[:0], now, false)
		keep(judged, 0)
		judged = st.JudgeBatch([]enrich.Event{ev}, judged[:0], now)
		keep(judged, n)
	}
	if err := sc.Err(); err != nil {
		return out, err
	}
	judged = st.Expire(judged[:0], last, true)
	keep(judged, 0)
	return out, nil
}

// jsonEvent is the part of an event that judging needs.
type jsonEvent struct {
	Schema  string `json:"schema"`
	Kind    string `json:"kind"`
	Time    string `json:"time"`
	Conn    string `json:"conn"`
	Outcome string `json:"outcome"`
	Dst     struct {
		IP         string `json:"ip"`
		Port       uint16 `json:"port"`
		Name       string `json:"name"`
		NameSource string `json:"name_source"`
		K8s        *struct {
			Namespace      string `json:"namespace"`
			Service        string `json:"service"`
			Pod            string `json:"pod"`
			ServiceAccount string `json:"service_account"`
		} `json:"k8s"`
		Identity string `json:"identity"`
	} `json:"dst"`
	TLS *struct {
		SNI string `json:"sni"`
	} `json:"tls"`
	Process *struct {
		PID uint32 `json:"pid"`
		Exe string `json:"exe"`
	} `json:"process"`
	Cgroup *struct {
		Path string `json:"path"`
	} `json:"cgroup"`
	K8s *struct {
		Namespace      string `json:"namespace"`
		Pod            string `json:"pod"`
		ServiceAccount string `json:"service_account"`
	} `json:"k8s"`
	Identity string `json:"identity"`
}

var kinds = map[string]collector.Kind{"connect": collector.KindConnect, "tls": collector.KindTLS, "verdict": collector.KindVerdict}

var outcomes = map[string]collector.Outcome{
	"established": collector.OutcomeEstablished, "refused": collector.OutcomeRefused,
	"timeout": collector.OutcomeTimeout, "unreachable": collector.OutcomeUnreachable,
	"reset": collector.OutcomeReset, "failed": collector.OutcomeFailed,
}

// enrichEvent rebuilds what the agent knew of a call from its JSON.
func enrichEvent(line []byte) (enrich.Event, bool) {
	var j jsonEvent
	if err := json.Unmarshal(line, &j); err != nil || j.Schema != Schema {
		return enrich.Event{}, false
	}
	kind, ok := kinds[j.Kind]
	if !ok {
		return enrich.Event{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return enrich.Event{}, false
	}
	ip, err := netip.ParseAddr(j.Dst.IP)
	if err != nil {
		return enrich.Event{}, false
	}
	var ev enrich.Event
	ev.Kind = kind
	ev.Time = t.UnixNano()
	fmt.Sscanf(j.Conn, "%x", &ev.Cookie)
	ev.Dst = netip.AddrPortFrom(ip.Unmap(), j.Dst.Port)
	ev.Outcome = outcomes[j.Outcome]
	ev.DstName, ev.NameSource = j.Dst.Name, j.Dst.NameSource
	if k := j.Dst.K8s; k != nil {
		ev.Callee = &enrich.Callee{Namespace: k.Namespace, Service: k.Service, Pod: k.Pod, ServiceAccount: k.ServiceAccount, Identity: j.Dst.Identity}
	}
	if kind == collector.KindTLS {
		ev.Hello = &tlshello.ClientHello{}
		if j.TLS != nil {
			ev.Hello.SNI = j.TLS.SNI
		}
	}
	if p := j.Process; p != nil {
		ev.PID = p.PID
		ev.Process = &enrich.Process{Exe: p.Exe}
	}
	if c := j.Cgroup; c != nil {
		ev.CgroupPath = c.Path
	}
	if k := j.K8s; k != nil && k.Namespace != "" {
		ev.Pod = &enrich.Pod{Namespace: k.Namespace, Name: k.Pod, ServiceAccount: k.ServiceAccount}
	}
	ev.Identity = j.Identity
	if unit, ok := strings.CutPrefix(j.Identity, "unit:"); ok {
		ev.Cgroup.Unit = unit
	}
	return ev, true
}
