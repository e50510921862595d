package scope

import (
	"net/netip"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

func TestAppendReason(t *testing.T) {
	ev := func(kind collector.Kind, dst string, j Judgement) *Event {
		e := &Event{Scope: j}
		e.Kind = kind
		e.Dst = netip.MustParseAddrPort(dst)
		return e
	}
	const connect, tls, verdict = collector.KindConnect, collector.KindTLS, collector.KindVerdict
	withCallee := func(e *Event, c *enrich.Callee) *Event { e.Callee = c; return e }
	ledger := &enrich.Callee{Namespace: "payments", Service: "ledger", Pod: "ledger-5c4-abc", Identity: "spiffe://cluster.local/ns/payments/sa/ledger"}
	for _, tc := range []struct {
		name string
		ev   *Event
		want string
	}{
		{"no verdict", ev(connect, "10.0.0.1:443", Judgement{}), ""},
		{"unscoped", ev(connect, "10.0.0.1:443", Judgement{Verdict: Unscoped}), "no CallScope binds this caller"},
		{"pending", ev(connect, "10.0.0.1:443", Judgement{Verdict: Pending, Scopes: "a"}), "allowed only if the TLS server name matches an sni rule"},
		{"allowed by cidr", ev(connect, "10.96.0.15:443", Judgement{Verdict: Allowed, Rule: "billing-egress/egress[0]", Via: ViaCIDR}),
			"allowed by billing-egress/egress[0] for 10.96.0.15:443"},
		{"allowed by dns", ev(connect, "10.96.0.15:443", Judgement{Verdict: Allowed, Rule: "b/egress[2]", Via: ViaDNS, Names: Names{DNS: "api.stripe.com"}}),
			"allowed by b/egress[2] for DNS name api.stripe.com"},
		{"allowed by sni", ev(tls, "10.96.0.15:443", Judgement{Verdict: Allowed, Rule: "b/egress[1]", Via: ViaSNI, Names: Names{SNI: "api.stripe.com"}}),
			"allowed by b/egress[1] for TLS server name api.stripe.com"},
		{"violation", ev(connect, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "billing-egress"}),
			"no egress rule of billing-egress allows 10.96.0.15:443"},
		{"violation with a DNS name", ev(connect, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "billing-egress", Names: Names{DNS: "api.stripe.com"}}),
			"no egress rule of billing-egress allows 10.96.0.15:443 (api.stripe.com)"},
		{"violation with an SNI", ev(tls, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "billing-egress", Names: Names{SNI: "evil.example"}}),
			"no egress rule of billing-egress allows 10.96.0.15:443 (evil.example)"},
		{"violation, same names", ev(tls, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "b", Names: Names{DNS: "api.stripe.com.", SNI: "API.stripe.com."}}),
			"no egress rule of b allows 10.96.0.15:443 (api.stripe.com.)"},
		{"violation, two names", ev(tls, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "b", Names: Names{DNS: "a.example", SNI: "b.example"}}),
			"no egress rule of b allows 10.96.0.15:443 (DNS name a.example, TLS server name b.example)"},
		{"violation, no server name", ev(tls, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "b"}),
			"no egress rule of b allows 10.96.0.15:443 (the ClientHello named no server)"},
		{"violation, DNS name but no server name", ev(tls, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "b", Names: Names{DNS: "a.example"}}),
			"no egress rule of b allows 10.96.0.15:443 (a.example; the ClientHello named no server)"},
		{"allowed by service", withCallee(ev(connect, "10.96.0.15:8443", Judgement{Verdict: Allowed, Rule: "b/egress[0]", Via: ViaService}), ledger),
			"allowed by b/egress[0] for Service payments/ledger"},
		{"allowed by namespace", withCallee(ev(connect, "10.244.1.5:8443", Judgement{Verdict: Allowed, Rule: "b/egress[1]", Via: ViaNamespace}), ledger),
			"allowed by b/egress[1] for namespace payments"},
		{"allowed by spiffe id", withCallee(ev(connect, "10.244.1.5:8443", Judgement{Verdict: Allowed, Rule: "b/egress[2]", Via: ViaSpiffeID}), ledger),
			"allowed by b/egress[2] for SPIFFE ID spiffe://cluster.local/ns/payments/sa/ledger"},
		{"violation, callee known", withCallee(ev(connect, "10.96.0.15:443", Judgement{Verdict: Violation, Scopes: "b", Names: Names{DNS: "ledger.payments.svc"}}), ledger),
			"no egress rule of b allows 10.96.0.15:443 (ledger.payments.svc); the callee is Service payments/ledger"},
		{"violation, callee a pod of no service", withCallee(ev(connect, "10.244.2.2:80", Judgement{Verdict: Violation, Scopes: "b"}), &enrich.Callee{Namespace: "shared", Pod: "cache-0"}),
			"no egress rule of b allows 10.244.2.2:80; the callee is pod shared/cache-0"},
		{"violation, callee unknown", ev(connect, "10.96.0.15:8443", Judgement{Verdict: Violation, Scopes: "b", CalleeUnknown: true}),
			"no egress rule of b allows 10.96.0.15:8443; the callee is not known as a Service or pod of the cluster"},
		{"violation, two scopes", ev(connect, "[2001:db8::1]:8443", Judgement{Verdict: Violation, Scopes: "a,b"}),
			"no egress rule of a or b allows [2001:db8::1]:8443"},
		{"violation, three scopes", ev(connect, "10.0.0.1:22", Judgement{Verdict: Violation, Scopes: "a,b,c"}),
			"no egress rule of a, b or c allows 10.0.0.1:22"},
		{"no ClientHello in time", ev(verdict, "10.0.0.1:443", Judgement{Verdict: Violation, Scopes: "a", Cause: CauseNoHello, Wait: 10 * time.Second}),
			"no TLS ClientHello named an allowed server within 10s"},
		{"no ClientHello in 250ms", ev(verdict, "10.0.0.1:443", Judgement{Verdict: Violation, Scopes: "a", Cause: CauseNoHello, Wait: 250 * time.Millisecond}),
			"no TLS ClientHello named an allowed server within 250ms"},
		{"stopped", ev(verdict, "10.0.0.1:443", Judgement{Verdict: Violation, Scopes: "a", Cause: CauseStopped, Wait: 2345678 * time.Microsecond}),
			"the agent stopped before a TLS ClientHello named an allowed server (pending for 2.346s)"},
		{"tracking full", ev(verdict, "10.0.0.1:443", Judgement{Verdict: Violation, Scopes: "a", Cause: CauseTrackingFull, Wait: 90 * time.Second}),
			"too many calls awaited their TLS ClientHello to keep awaiting this one (pending for 90s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(AppendReason(nil, tc.ev)); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
			prefix := []byte(`"reason":"`)
			if got := string(AppendReason(prefix, tc.ev)); got != string(prefix)+tc.want {
				t.Errorf("appended: %q", got)
			}
			buf := make([]byte, 0, 256)
			if n := testing.AllocsPerRun(100, func() { buf = AppendReason(buf[:0], tc.ev) }); n != 0 {
				t.Errorf("%v allocations", n)
			}
		})
	}
}

func BenchmarkAppendReason(b *testing.B) {
	ev := &Event{Scope: Judgement{Verdict: Violation, Scopes: "billing-egress,gold-tier", Names: Names{DNS: "api.stripe.com", SNI: "evil.example"}}}
	ev.Kind = collector.KindTLS
	ev.Dst = netip.MustParseAddrPort("10.96.0.15:443")
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendReason(buf[:0], ev)
	}
}
