package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/eventschema"
	"github.com/callscope/callscope/scope"
)

// schemaEvents are one of each kind of event, with every fact known.
func schemaEvents() []scope.Event {
	at := time.Date(2026, 11, 27, 4, 32, 4, 0, time.UTC).UnixNano()
	call := enrich.Event{
		Event: collector.Event{
			Kind: collector.KindConnect, Outcome: collector.OutcomeEstablished, Time: at, Cookie: 0x1a2b3c,
			Src: netip.MustParseAddrPort("10.0.3.7:43210"), Dst: netip.MustParseAddrPort("10.96.0.15:443"),
			PID: 4242, TID: 4243, UID: 1000, GID: 1001, CgroupID: 9731, NetNS: 4026531840, TTY: true, LoginUID: 1000,
		},
		Process:    &enrich.Process{Exe: "/app/billing", Cmdline: []string{"/app/billing", "--prod"}, PPID: 1},
		CgroupPath: "/kubepods.slice/kubepods-pod1b6f0c2e_5d7a.slice/cri-containerd-" + strings.Repeat("ab", 32) + ".scope",
		Cgroup:     enrich.CgroupInfo{ContainerID: strings.Repeat("ab", 32), Runtime: "containerd", PodUID: "1b6f0c2e-5d7a"},
		Pod:        &enrich.Pod{UID: "1b6f0c2e-5d7a", Namespace: "payments", Name: "billing-7d9f-x2", ServiceAccount: "billing", Workload: "Deployment/billing"},
		Identity:   "spiffe://cluster.local/ns/payments/sa/billing",
		DstName:    "ledger.payments.svc.cluster.local", NameSource: enrich.NameSourceDNS,
		Callee: &enrich.Callee{Namespace: "payments", Service: "ledger", Pod: "ledger-1", ServiceAccount: "ledger",
			Workload: "Deployment/ledger", Identity: "spiffe://cluster.local/ns/payments/sa/ledger"},
	}
	copy(call.Comm[:], "billing")
	judged := scope.Judgement{Verdict: scope.Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: scope.ViaCIDR, PolicyVersion: "3f2a9c01b7de"}

	refused := call
	refused.Outcome, refused.Errno, refused.Src = collector.OutcomeRefused, 111, netip.AddrPort{}
	hello := call
	hello.Kind, hello.Outcome = collector.KindTLS, collector.OutcomeUnknown
	hello.DstName, hello.NameSource = "api.stripe.com", enrich.NameSourceSNI
	hello.Hello = &tlshello.ClientHello{LegacyVersion: 0x0303, SNI: "api.stripe.com", ALPN: []string{"h2", "http/1.1"},
		Versions: []uint16{0x0304, 0x0303}, CipherSuites: 17, ECH: true, PostQuantum: true, JA4: "t13d1715h2_5b57614c22b0_3d5424432f57", Truncated: true}
	hello.ServerHello = &tlshello.ServerHello{Version: 0x0304, CipherSuite: 0x1301, HelloRetry: true}
	verdict := call
	verdict.Kind = collector.KindVerdict
	loss := enrich.Event{Event: collector.Event{Kind: collector.KindLoss, Time: at, Lost: 3, LossStage: collector.StageKernel, LossReason: collector.ReasonRingBufferFull}}
	return []scope.Event{
		{Event: call, Scope: judged, Findings: 1<<scope.HumanUse | 1<<scope.CrossEnvironment},
		{Event: refused, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress", PolicyVersion: "3f2a9c01b7de",
			Staged: scope.Staged{Verdict: scope.WouldViolate, Scopes: "billing-next"}}},
		{Event: refused, Scope: scope.Judgement{Verdict: scope.WouldViolate, Scopes: "billing-next", Mode: scope.Audit}},
		{Event: hello, Scope: scope.Judgement{Verdict: scope.Pending, Scopes: "billing-egress"}, Findings: 1 << scope.LegacyTLS},
		{Event: verdict, Scope: scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress", Cause: scope.CauseNoHello, Wait: 10 * time.Second}},
		{Event: loss},
		{Event: enrich.Event{Event: collector.Event{Kind: collector.KindConnect, Outcome: collector.OutcomeTimeout, Time: at,
			Dst: netip.MustParseAddrPort("[2001:db8::15]:8443"), PID: 7}}, Scope: scope.Judgement{Verdict: scope.Unscoped}},
	}
}

// TestEventSchema encodes one event of each kind with the exporter's
// encoder, checks each line against docs/callscope-v1.schema.json, and
// decodes it as tail does: the encoder, the schema document and tail
// cannot drift apart unnoticed.
func TestEventSchema(t *testing.T) {
	enc := exporter.NewEncoder("worker-1", "inst")
	kinds := map[string]bool{}
	for i, ev := range schemaEvents() {
		line := enc.Append(nil, &ev)
		if err := eventschema.Validate(line); err != nil {
			t.Errorf("event %d: %v\n%s", i, err, line)
		}
		te, err := decodeTailEvent(line)
		if err != nil {
			t.Fatalf("event %d: tail cannot read it: %v\n%s", i, err, line)
		}
		kinds[te.Kind] = true
		if te.Kind != ev.Kind.String() || te.Seq != uint64(i+1) || !te.Time.Equal(time.Unix(0, ev.Time)) {
			t.Errorf("event %d: tail read kind %s seq %d time %v", i, te.Kind, te.Seq, te.Time)
		}
		if ev.Kind == collector.KindLoss {
			if te.Loss == nil || te.Loss.Count != ev.Lost || te.Loss.Stage != ev.LossStage || te.Loss.Reason != ev.LossReason {
				t.Errorf("event %d: tail read loss %+v", i, te.Loss)
			}
			continue
		}
		if te.Dst == nil || te.Dst.IP != ev.Dst.Addr().String() || te.Dst.Port != ev.Dst.Port() || te.Dst.Name != ev.DstName {
			t.Errorf("event %d: tail read dst %+v", i, te.Dst)
		}
		if te.Process == nil || te.Process.PID != int(ev.PID) || te.Identity != ev.Identity {
			t.Errorf("event %d: tail read process %+v identity %q", i, te.Process, te.Identity)
		}
		if te.Scope == nil || te.Scope.Verdict != ev.Scope.Verdict.String() || te.Scope.PolicyVersion != ev.Scope.PolicyVersion {
			t.Errorf("event %d: tail read scope %+v", i, te.Scope)
		}
		var ids []string
		for _, f := range te.Findings {
			ids = append(ids, f.ID)
		}
		var want []string
		for f := range scope.NumFindings {
			if ev.Findings.Has(f) {
				want = append(want, scope.Catalogue[f].ID)
			}
		}
		if !reflect.DeepEqual(ids, want) {
			t.Errorf("event %d: tail read findings %v, want %v", i, ids, want)
		}
		if ev.Kind == collector.KindTLS && (te.TLS == nil || te.TLS.SNI != ev.Hello.SNI) {
			t.Errorf("event %d: tail read tls %+v", i, te.TLS)
		}
	}
	for _, k := range []string{"connect", "tls", "verdict", "loss"} {
		if !kinds[k] {
			t.Errorf("no %s event checked", k)
		}
	}

	// The schema refuses what the contract does not allow.
	for _, bad := range []string{
		`{"schema":"callscope/v1","id":"i-1","seq":1,"time":"2026-11-27T04:32:04.000000000Z","kind":"connect","proto":"tcp","process":{"pid":1,"tid":1,"uid":0,"gid":0},"colour":"red"}`,
		`{"schema":"callscope/v2","id":"i-1","seq":1,"time":"2026-11-27T04:32:04.000000000Z","kind":"loss","loss":{"stage":"kernel","reason":"x","count":1}}`,
		`{"schema":"callscope/v1","id":"i-1","seq":1,"time":"2026-11-27T04:32:04.000000000Z","kind":"tls","proto":"tcp","outcome":"established","process":{"pid":1,"tid":1,"uid":0,"gid":0}}`,
		`{"schema":"callscope/v1","id":"i-1","seq":1,"time":"2026-11-27T04:32:04.000000000Z","kind":"connect","proto":"tcp","process":{"pid":1,"tid":1,"uid":0,"gid":0},"findings":[{"id":"sloppy"}]}`,
	} {
		if err := eventschema.Validate([]byte(bad)); err == nil {
			t.Errorf("the schema takes %s", bad)
		}
	}
}
