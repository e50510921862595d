package scope

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

var billingPod = &enrich.Pod{UID: "u1", Namespace: "payments", Name: "billing-7d9f-x2", ServiceAccount: "billing",
	Labels: map[string]string{"app": "billing", "tier": "gold"}, Workload: "Deployment/billing"}

// call builds an event from a caller in billingPod, or from a host process
// when pod is nil.
func call(pod *enrich.Pod, dst string, mod ...func(*enrich.Event)) *enrich.Event {
	ev := &enrich.Event{}
	ev.Kind = collector.KindConnect
	ev.Dst = netip.MustParseAddrPort(dst)
	ev.Pod = pod
	ev.Process = &enrich.Process{Exe: "/app/billing"}
	ev.CgroupPath = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope"
	if pod != nil {
		ev.Identity = enrich.SpiffeID("cluster.local", pod.Namespace, pod.ServiceAccount)
	} else {
		ev.Identity = "exe:/app/billing uid:0"
	}
	for _, f := range mod {
		f(ev)
	}
	return ev
}

func TestJudge(t *testing.T) {
	policies := []Policy{
		{Name: "billing-egress", Subject: Subject{Namespace: "payments", ServiceAccount: "billing"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.0.0.0/8")}, {DNS: "*.stripe.com"}}, Ports: []PortRange{{443, 443}, {8000, 8100}}},
			{To: []Peer{{SNI: "api.stripe.com"}}, Ports: []PortRange{{443, 443}}},
			{To: []Peer{{CIDR: mustPrefix("2001:db8::/32")}}}, // any port
		}},
		{Name: "gold-tier", Subject: Subject{PodLabels: map[string]string{"tier": "gold"}}, Egress: []Rule{
			{To: []Peer{{DNS: "**.amazonaws.com"}}, Ports: []PortRange{{443, 443}}},
		}},
		{Name: "backups", Subject: Subject{SystemdUnit: "backup*.service"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("192.0.2.0/24")}}, Ports: []PortRange{{22, 22}}},
		}},
		{Name: "ci", Subject: Subject{Exe: "/usr/local/bin/ci-*", Cgroup: "/system.slice/*"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.1.0.0/16")}}},
		}},
		{Name: "spiffe-ns", Subject: Subject{SpiffeID: "spiffe://cluster.local/ns/shop/sa/*"}},
	}
	unit := func(ev *enrich.Event) {
		ev.Cgroup.Unit = "backup-nightly.service"
		ev.Identity = "unit:backup-nightly.service"
	}
	ci := func(ev *enrich.Event) {
		ev.Process.Exe = "/usr/local/bin/ci-runner"
		ev.CgroupPath = "/system.slice/ci.service"
	}
	shop := &enrich.Pod{Namespace: "shop", ServiceAccount: "cart"}

	cases := []struct {
		name    string
		ev      *enrich.Event
		names   Names
		verdict Verdict
		scopes  string
		rule    string
	}{
		{"cidr and port", call(billingPod, "10.96.0.15:443"), Names{}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[0]"},
		{"port range", call(billingPod, "10.96.0.15:8050"), Names{}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[0]"},
		{"port outside", call(billingPod, "10.96.0.15:8101"), Names{SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"internal address outside every cidr", call(billingPod, "172.16.0.1:443"), Names{SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"dns one label", call(billingPod, "203.0.113.5:443"), Names{DNS: "api.stripe.com", SNIFinal: true}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[0]"},
		{"dns case and trailing dot", call(billingPod, "203.0.113.5:443"), Names{DNS: "API.Stripe.COM.", SNIFinal: true}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[0]"},
		{"dns star is one label", call(billingPod, "203.0.113.5:443"), Names{DNS: "a.b.stripe.com", SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"dns double star, second scope", call(billingPod, "203.0.113.5:443"), Names{DNS: "a.b.s3.amazonaws.com", SNIFinal: true}, Allowed, "billing-egress,gold-tier", "gold-tier/egress[0]"},
		{"double star needs a label", call(billingPod, "203.0.113.5:443"), Names{DNS: "amazonaws.com", SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"sni allows", call(billingPod, "203.0.113.5:443"), Names{SNI: "api.stripe.com"}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[1]"},
		{"sni outside", call(billingPod, "203.0.113.5:443"), Names{SNI: "evil.example", SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"sni to come: pending", call(billingPod, "203.0.113.5:443"), Names{}, Pending, "billing-egress,gold-tier", ""},
		{"sni to come on a port no sni rule has", call(billingPod, "203.0.113.5:80"), Names{}, Violation, "billing-egress,gold-tier", ""},
		{"ipv6 cidr any port", call(billingPod, "[2001:db8::15]:9999"), Names{}, Allowed, "billing-egress,gold-tier", "billing-egress/egress[2]"},
		{"ipv6 outside", call(billingPod, "[2001:db9::15]:443"), Names{SNIFinal: true}, Violation, "billing-egress,gold-tier", ""},
		{"systemd unit glob", call(nil, "192.0.2.10:22", unit), Names{}, Allowed, "backups", "backups/egress[0]"},
		{"systemd unit, wrong port", call(nil, "192.0.2.10:23", unit), Names{}, Violation, "backups", ""},
		{"exe and cgroup globs", call(nil, "10.1.2.3:5432", ci), Names{}, Allowed, "ci", "ci/egress[0]"},
		{"exe glob does not cross /", call(nil, "10.1.2.3:5432", ci, func(ev *enrich.Event) { ev.Process.Exe = "/usr/local/bin/ci-x/y" }), Names{}, Unscoped, "", ""},
		{"exe unknown binds nothing", call(nil, "10.1.2.3:5432", ci, func(ev *enrich.Event) { ev.Process = nil }), Names{}, Unscoped, "", ""},
		{"spiffe glob, no egress: every call is a violation", call(shop, "10.0.0.1:443"), Names{SNIFinal: true}, Violation, "spiffe-ns", ""},
		{"caller no scope names", call(nil, "10.0.0.1:443"), Names{}, Unscoped, "", ""},
		{"pod of another namespace", call(&enrich.Pod{Namespace: "other", ServiceAccount: "billing"}, "10.0.0.1:443"), Names{}, Unscoped, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := Compile(policies)
			var j Judgement
			m.Judge(tc.ev, tc.names, &j)
			if j.Verdict != tc.verdict || j.Scopes != tc.scopes || j.Rule != tc.rule {
				t.Errorf("got %v scopes %q rule %q; want %v %q %q", j.Verdict, j.Scopes, j.Rule, tc.verdict, tc.scopes, tc.rule)
			}
			// The cached binding gives the same answer.
			var again Judgement
			m.Judge(tc.ev, tc.names, &again)
			if again != j {
				t.Errorf("cached judgement %+v differs from %+v", again, j)
			}
		})
	}

	// One matcher judging every caller in turn, forwards then backwards:
	// a binding remembered for one caller must not answer for the next.
	m := Compile(policies)
	for pass := range 2 {
		for n := range cases {
			tc := cases[n]
			if pass == 1 {
				tc = cases[len(cases)-1-n]
			}
			var j Judgement
			m.Judge(tc.ev, tc.names, &j)
			if j.Verdict != tc.verdict || j.Scopes != tc.scopes || j.Rule != tc.rule {
				t.Errorf("shared matcher, pass %d, %s: got %v scopes %q rule %q; want %v %q %q",
					pass, tc.name, j.Verdict, j.Scopes, j.Rule, tc.verdict, tc.scopes, tc.rule)
			}
		}
	}
}

func TestHostMatches(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"api.stripe.com", "api.stripe.com", true},
		{"api.stripe.com", "API.STRIPE.COM.", true},
		{"api.stripe.com", "xapi.stripe.com", false},
		{"*.stripe.com", "api.stripe.com", true},
		{"*.stripe.com", "stripe.com", false},
		{"*.stripe.com", ".stripe.com", false},
		{"api.*.com", "api.stripe.com", true},
		{"**.stripe.com", "a.b.c.stripe.com", true},
		{"**.stripe.com", "stripe.com", false},
		{"**.stripe.com", "evilstripe.com", false},
		{"*", "localhost", true},
		{"*", "a.b", false},
		{"stripe.com", "stripe.com.evil", false},
	} {
		if got := hostMatches(tc.pattern, tc.name); got != tc.want {
			t.Errorf("hostMatches(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

func TestJudgeAllocs(t *testing.T) {
	m := Compile(benchPolicies(1000))
	ev := call(billingPod, "10.96.0.15:443")
	var j Judgement
	m.Judge(ev, Names{}, &j)
	if n := testing.AllocsPerRun(1000, func() { m.Judge(ev, Names{DNS: "api.stripe.com"}, &j) }); n != 0 {
		t.Errorf("%v allocations per verdict", n)
	}
}

// benchPolicies makes n scopes, each binding its own namespace, the last
// one billing's.
func benchPolicies(n int) []Policy {
	ps := make([]Policy, n)
	for i := range ps {
		ns := "team-" + strconv.Itoa(i)
		if i == n-1 {
			ns = "payments"
		}
		ps[i] = Policy{Name: "scope-" + strconv.Itoa(i), Subject: Subject{Namespace: ns}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10." + strconv.Itoa(i%256) + ".0.0/16")}, {DNS: "*.svc-" + strconv.Itoa(i) + ".example"}}, Ports: []PortRange{{443, 443}}},
			{To: []Peer{{SNI: "api-" + strconv.Itoa(i) + ".example"}}},
		}}
	}
	return ps
}

// BenchmarkJudge: verdicts per second on one core with 1,000 scopes loaded.
func BenchmarkJudge(b *testing.B) {
	m := Compile(benchPolicies(1000))
	evs := []*enrich.Event{
		call(billingPod, "10.231.0.15:443"), // allowed by cidr
		call(billingPod, "172.16.0.1:443"),  // violation
		call(nil, "10.0.0.1:443"),           // unscoped
	}
	var j Judgement
	for _, ev := range evs {
		m.Judge(ev, Names{}, &j)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Judge(evs[i%len(evs)], Names{DNS: "x.svc-999.example", SNIFinal: true}, &j)
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verdicts/s")
}

func BenchmarkCompile(b *testing.B) {
	ps := benchPolicies(1000)
	b.ReportAllocs()
	for b.Loop() {
		Compile(ps)
	}
}

// TestJudgeByCallee: service, namespace and spiffeID rules allow calls to
// the callees they name, on their ports, and a callee the cluster cannot
// name is allowed by none of them.
func TestJudgeByCallee(t *testing.T) {
	m := Compile([]Policy{{Name: "billing-egress", Subject: Subject{Namespace: "payments"}, Egress: []Rule{
		{To: []Peer{{Service: "payments/ledger"}}, Ports: []PortRange{{8443, 8443}}},
		{To: []Peer{{Namespace: "shared"}}},
		{To: []Peer{{SpiffeID: "spiffe://cluster.local/ns/*/sa/audit"}}, Ports: []PortRange{{443, 443}}},
		{To: []Peer{{CIDR: mustPrefix("192.0.2.0/24")}}},
	}}})
	ledgerSvc := &enrich.Callee{Namespace: "payments", Service: "ledger"}
	ledgerPod := &enrich.Callee{Namespace: "payments", Service: "ledger", Pod: "ledger-5c4-abc", ServiceAccount: "ledger",
		Workload: "Deployment/ledger", Identity: "spiffe://cluster.local/ns/payments/sa/ledger"}
	sharedPod := &enrich.Callee{Namespace: "shared", Pod: "cache-0", ServiceAccount: "cache", Identity: "spiffe://cluster.local/ns/shared/sa/cache"}
	audit := &enrich.Callee{Namespace: "ops", Pod: "audit-1", ServiceAccount: "audit", Identity: "spiffe://cluster.local/ns/ops/sa/audit"}
	otherSvc := &enrich.Callee{Namespace: "payments", Service: "ledger-admin"}
	to := func(c *enrich.Callee) func(*enrich.Event) { return func(ev *enrich.Event) { ev.Callee = c } }

	for _, tc := range []struct {
		name    string
		ev      *enrich.Event
		verdict Verdict
		rule    string
		via     Via
		unknown bool
	}{
		{"service's cluster IP", call(billingPod, "10.96.0.15:8443", to(ledgerSvc)), Allowed, "billing-egress/egress[0]", ViaService, false},
		{"service's endpoint", call(billingPod, "10.244.1.5:8443", to(ledgerPod)), Allowed, "billing-egress/egress[0]", ViaService, false},
		{"service, other port", call(billingPod, "10.96.0.15:443", to(ledgerSvc)), Violation, "", 0, false},
		{"another service of the namespace", call(billingPod, "10.96.0.16:8443", to(otherSvc)), Violation, "", 0, false},
		{"namespace, any port", call(billingPod, "10.244.2.9:6379", to(sharedPod)), Allowed, "billing-egress/egress[1]", ViaNamespace, false},
		{"spiffe id", call(billingPod, "10.244.3.3:443", to(audit)), Allowed, "billing-egress/egress[2]", ViaSpiffeID, false},
		{"spiffe id, other port", call(billingPod, "10.244.3.3:80", to(audit)), Violation, "", 0, false},
		{"callee unknown", call(billingPod, "10.96.0.15:8443"), Violation, "", 0, true},
		{"callee unknown, allowed by cidr", call(billingPod, "192.0.2.7:8443"), Allowed, "billing-egress/egress[3]", ViaCIDR, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var j Judgement
			m.Judge(tc.ev, Names{SNIFinal: true}, &j)
			if j.Verdict != tc.verdict || j.Rule != tc.rule || j.Via != tc.via {
				t.Errorf("got %v %q via %v, want %v %q via %v", j.Verdict, j.Rule, j.Via, tc.verdict, tc.rule, tc.via)
			}
			if tc.verdict == Violation && j.CalleeUnknown != tc.unknown {
				t.Errorf("CalleeUnknown %v, want %v", j.CalleeUnknown, tc.unknown)
			}
		})
	}
	ev := call(billingPod, "10.244.3.3:443", to(audit))
	var j Judgement
	if n := testing.AllocsPerRun(1000, func() { m.Judge(ev, Names{}, &j) }); n != 0 {
		t.Errorf("%v allocations per verdict by callee", n)
	}
}
