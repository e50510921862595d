package scope

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

func TestParseMode(t *testing.T) {
	const rest = "a\nspec:\n  subject: {namespace: payments}\n"
	for _, tc := range []struct {
		name, yaml string
		want       Mode
	}{
		{"left out", docHead + rest, Enforce},
		{"enforce", docHead + rest + "  mode: enforce\n", Enforce},
		{"audit", docHead + rest + "  mode: audit\n", Audit},
		{"null", docHead + rest + "  mode:\n", Enforce},
	} {
		ps, err := Parse("p.yaml", []byte(tc.yaml))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(ps) != 1 || ps[0].Mode != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.name, ps[0].Mode, tc.want)
		}
	}
	for yaml, want := range map[string]string{
		docHead + rest + "  mode: Audit\n":   `p.yaml:7:9: mode: "Audit" is not a mode: want enforce (the default) or audit`,
		docHead + rest + "  mode: dryrun\n":  `p.yaml:7:9: mode: "dryrun" is not a mode: want enforce (the default) or audit`,
		docHead + rest + "  mode: [audit]\n": `p.yaml:7:9: mode: must be a string, not a list`,
		docHead + rest + "  mode: true\n":    `p.yaml:7:9: mode: must be a string, not bool true: quote it`,
	} {
		_, err := Parse("p.yaml", []byte(yaml))
		if got := problems(t, err); len(got) != 1 || got[0] != want {
			t.Errorf("%q:\n got %q\nwant %q", yaml, got, want)
		}
	}
}

func TestVersionCoversMode(t *testing.T) {
	const base = docHead + "a\nspec:\n  subject: {namespace: payments}\n  egress: [{to: [{cidr: 10.0.0.0/8}]}]\n"
	enforced := parsedVersion(t, base)
	if v := parsedVersion(t, base+"  mode: enforce\n"); v != enforced {
		t.Errorf("mode: enforce gives version %s, leaving it out %s: they say the same", v, enforced)
	}
	if v := parsedVersion(t, base+"  mode: audit\n"); v == enforced {
		t.Errorf("staging the scope leaves the version at %s", v)
	}
	// The version of policies without a mode is what it was before modes.
	if v := Version([]Policy{{Name: "a", Subject: Subject{Namespace: "payments"}}}); v != Version([]Policy{{Name: "a", Mode: Enforce, Subject: Subject{Namespace: "payments"}}}) {
		t.Errorf("version %s", v)
	}
}

// stagedPolicies: billing-egress (enforced) lets billing call 10/8;
// billing-next (staged) would let it call 10.1/16 and api.stripe.com by
// SNI; shop-next (staged) binds shop alone, letting it call
// api.shop.example by SNI and 192.0.2.0/24.
func stagedPolicies() []Policy {
	return []Policy{
		{Name: "billing-egress", Subject: Subject{Namespace: "payments"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.0.0.0/8")}}, Ports: []PortRange{{443, 443}}},
		}},
		{Name: "billing-next", Mode: Audit, Subject: Subject{Namespace: "payments"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.1.0.0/16")}}, Ports: []PortRange{{443, 443}}},
			{To: []Peer{{SNI: "api.stripe.com"}}, Ports: []PortRange{{443, 443}}},
		}},
		{Name: "shop-next", Mode: Audit, Subject: Subject{Namespace: "shop"}, Egress: []Rule{
			{To: []Peer{{SNI: "api.shop.example"}}, Ports: []PortRange{{443, 443}}},
			{To: []Peer{{CIDR: mustPrefix("192.0.2.0/24")}}},
		}},
	}
}

func TestJudgeStaged(t *testing.T) {
	m := Compile(stagedPolicies())
	for _, tc := range []struct {
		name   string
		ev     *enrich.Event
		names  Names
		want   Judgement
		reason string
		staged string
	}{{
		name:   "staged alone: allowed",
		ev:     call(shopPod, "192.0.2.7:80"),
		want:   Judgement{Verdict: Allowed, Scopes: "shop-next", Rule: "shop-next/egress[1]", Via: ViaCIDR, Mode: Audit},
		reason: "allowed by shop-next/egress[1] for 192.0.2.7:80",
	}, {
		name:   "staged alone: outside",
		ev:     call(shopPod, "198.51.100.7:80"),
		want:   Judgement{Verdict: WouldViolate, Scopes: "shop-next", Mode: Audit},
		reason: "no egress rule of shop-next allows 198.51.100.7:80",
	}, {
		name:   "staged alone: pending",
		ev:     call(shopPod, "198.51.100.7:443"),
		want:   Judgement{Verdict: Pending, Scopes: "shop-next", Mode: Audit},
		reason: "allowed only if the TLS server name matches an sni rule",
	}, {
		name:   "staged alone: outside, no ClientHello to come",
		ev:     call(shopPod, "198.51.100.7:443"),
		names:  Names{SNIFinal: true},
		want:   Judgement{Verdict: WouldViolate, Scopes: "shop-next", Mode: Audit, Names: Names{SNIFinal: true}},
		reason: "no egress rule of shop-next allows 198.51.100.7:443",
	}, {
		name: "both allow",
		ev:   call(billingPod, "10.1.2.3:443"),
		want: Judgement{Verdict: Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: ViaCIDR,
			Staged: Staged{Verdict: Allowed, Scopes: "billing-next", Rule: "billing-next/egress[0]", Via: ViaCIDR}},
		reason: "allowed by billing-egress/egress[0] for 10.1.2.3:443",
		staged: "allowed by billing-next/egress[0] for 10.1.2.3:443",
	}, {
		name:  "enforced allows, staged would not",
		ev:    call(billingPod, "10.2.0.1:443"),
		names: Names{SNIFinal: true},
		want: Judgement{Verdict: Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: ViaCIDR, Names: Names{SNIFinal: true},
			Staged: Staged{Verdict: WouldViolate, Scopes: "billing-next"}},
		reason: "allowed by billing-egress/egress[0] for 10.2.0.1:443",
		staged: "no egress rule of billing-next allows 10.2.0.1:443",
	}, {
		name:  "enforced refuses, staged would allow: the enforced verdict stands",
		ev:    call(billingPod, "203.0.113.5:443"),
		names: Names{SNI: "api.stripe.com", SNIFinal: true},
		want: Judgement{Verdict: Violation, Scopes: "billing-egress", Names: Names{SNI: "api.stripe.com", SNIFinal: true},
			Staged: Staged{Verdict: Allowed, Scopes: "billing-next", Rule: "billing-next/egress[1]", Via: ViaSNI}},
		reason: "no egress rule of billing-egress allows 203.0.113.5:443 (api.stripe.com)",
		staged: "allowed by billing-next/egress[1] for TLS server name api.stripe.com",
	}, {
		name: "enforced allows, staged pending",
		ev:   call(billingPod, "10.2.0.1:443"),
		want: Judgement{Verdict: Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: ViaCIDR,
			Staged: Staged{Verdict: Pending, Scopes: "billing-next"}},
		staged: "allowed only if the TLS server name matches an sni rule",
	}, {
		name: "unscoped",
		ev:   call(nil, "10.0.0.1:443"),
		want: Judgement{Verdict: Unscoped},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var j Judgement
			m.Judge(tc.ev, tc.names, &j)
			j.hit, j.Staged.hit = nil, nil
			tc.want.PolicyVersion = m.Version()
			if tc.want.Names == (Names{}) {
				tc.want.Names = tc.names
			}
			if j != tc.want {
				t.Errorf("judgement\n %+v\nwant\n %+v", j, tc.want)
			}
			ev := &Event{Event: *tc.ev, Scope: j}
			if r := string(AppendReason(nil, ev)); tc.reason != "" && r != tc.reason {
				t.Errorf("reason %q, want %q", r, tc.reason)
			}
			if r := string(AppendStagedReason(nil, ev)); r != tc.staged {
				t.Errorf("staged reason %q, want %q", r, tc.staged)
			}
		})
	}
}

type stagedWant struct {
	kind    collector.Kind
	cookie  uint64
	verdict Verdict
	staged  Verdict
	reason  string
	sreason string
}

func TestStageStaged(t *testing.T) {
	shopPending := connect(shopPod, 1, "198.51.100.7:443")
	billingBoth := connect(billingPod, 2, "10.2.0.1:443")
	for _, tc := range []struct {
		name  string
		steps []step
		want  []stagedWant
		stats StageStats
	}{{
		name:  "staged alone: would violate",
		steps: []step{{events: []enrich.Event{connect(shopPod, 1, "198.51.100.7:80")}}},
		want:  []stagedWant{{collector.KindConnect, 1, WouldViolate, 0, "no egress rule of shop-next allows 198.51.100.7:80", ""}},
		stats: StageStats{WouldViolate: 1},
	}, {
		name: "staged alone: pending, then an allowed SNI",
		steps: []step{
			{events: []enrich.Event{shopPending}},
			{at: time.Millisecond, events: []enrich.Event{hello(shopPending, "api.shop.example")}},
			{at: time.Minute, all: true},
		},
		want: []stagedWant{
			{collector.KindConnect, 1, Pending, 0, "", ""},
			{collector.KindTLS, 1, Allowed, 0, "allowed by shop-next/egress[0] for TLS server name api.shop.example", ""},
		},
		stats: StageStats{Pending: 1, Allowed: 1},
	}, {
		name: "staged alone: pending closes as would_violate, not violation",
		steps: []step{
			{events: []enrich.Event{shopPending}},
			{at: 11 * time.Second},
		},
		want: []stagedWant{
			{collector.KindConnect, 1, Pending, 0, "", ""},
			{collector.KindVerdict, 1, WouldViolate, 0, "no TLS ClientHello named an allowed server within 10s", ""},
		},
		stats: StageStats{Pending: 1, WouldViolate: 1, TimedOut: 1},
	}, {
		name: "staged alone: pending, the agent stops",
		steps: []step{
			{events: []enrich.Event{shopPending}},
			{at: time.Second, all: true},
		},
		want: []stagedWant{
			{collector.KindConnect, 1, Pending, 0, "", ""},
			{collector.KindVerdict, 1, WouldViolate, 0, "the agent stopped before a TLS ClientHello named an allowed server (pending for 1s)", ""},
		},
		stats: StageStats{Pending: 1, WouldViolate: 1, Stopped: 1},
	}, {
		name: "enforced allowed, staged pending, then an allowed SNI",
		steps: []step{
			{events: []enrich.Event{billingBoth}},
			{at: time.Millisecond, events: []enrich.Event{hello(billingBoth, "api.stripe.com")}},
			{at: time.Minute, all: true},
		},
		want: []stagedWant{
			{collector.KindConnect, 2, Allowed, Pending, "allowed by billing-egress/egress[0] for 10.2.0.1:443", "allowed only if the TLS server name matches an sni rule"},
			{collector.KindTLS, 2, Allowed, Allowed, "allowed by billing-egress/egress[0] for 10.2.0.1:443", "allowed by billing-next/egress[1] for TLS server name api.stripe.com"},
		},
		stats: StageStats{Allowed: 2},
	}, {
		name: "enforced allowed, staged pending: the verdict stands, the staged outcome closes",
		steps: []step{
			{events: []enrich.Event{billingBoth}},
			{at: 10 * time.Second},
		},
		want: []stagedWant{
			{collector.KindConnect, 2, Allowed, Pending, "", ""},
			{collector.KindVerdict, 2, Allowed, WouldViolate, "allowed by billing-egress/egress[0] for 10.2.0.1:443", "no TLS ClientHello named an allowed server within 10s"},
		},
		stats: StageStats{Allowed: 1, WouldViolate: 1, TimedOut: 1},
	}, {
		name:  "enforced allowed, staged refuses a plain call",
		steps: []step{{events: []enrich.Event{connect(billingPod, 3, "10.2.0.1:443", outcome(collector.OutcomeRefused))}}},
		want: []stagedWant{
			{collector.KindConnect, 3, Allowed, WouldViolate, "allowed by billing-egress/egress[0] for 10.2.0.1:443", "no egress rule of billing-next allows 10.2.0.1:443"},
		},
		stats: StageStats{Allowed: 1, WouldViolate: 1},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStage(StageConfig{Policies: NewPolicies(Compile(stagedPolicies()))})
			var got []Event
			for _, st := range tc.steps {
				if st.events != nil {
					got = s.JudgeBatch(st.events, got, t0.Add(st.at))
				} else {
					got = s.Expire(got, t0.Add(st.at), st.all)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d events, want %d:\n%s", len(got), len(tc.want), describeEvents(got))
			}
			for i, w := range tc.want {
				ev := &got[i]
				if ev.Kind != w.kind || ev.Cookie != w.cookie || ev.Scope.Verdict != w.verdict || ev.Scope.Staged.Verdict != w.staged {
					t.Errorf("event %d: %v %d %v staged %v; want %v %d %v staged %v", i, ev.Kind, ev.Cookie,
						ev.Scope.Verdict, ev.Scope.Staged.Verdict, w.kind, w.cookie, w.verdict, w.staged)
				}
				if r := string(AppendReason(nil, ev)); w.reason != "" && r != w.reason {
					t.Errorf("event %d: reason %q, want %q", i, r, w.reason)
				}
				if r := string(AppendStagedReason(nil, ev)); w.sreason != "" && r != w.sreason {
					t.Errorf("event %d: staged reason %q, want %q", i, r, w.sreason)
				}
			}
			if st := s.Stats(); st != tc.stats {
				t.Errorf("stats %+v, want %+v", st, tc.stats)
			}
		})
	}
}

func ruleHits(p interface {
	RuleHits(func(policy, rule string, hits uint64)) uint64
}) (map[string]uint64, uint64) {
	got := map[string]uint64{}
	overflow := p.RuleHits(func(policy, rule string, n uint64) {
		if !strings.HasPrefix(rule, policy+"/") {
			panic(rule + " is not a rule of " + policy)
		}
		got[rule] = n
	})
	return got, overflow
}

// A rule counts the calls it allows, once each: on the connect, or on the
// tls event of a pending one; staged rules too.
func TestRuleHits(t *testing.T) {
	policies := NewPolicies(Compile(append(stagedPolicies(), Policy{Name: "billing-sni", Subject: Subject{Namespace: "payments"},
		Egress: []Rule{{To: []Peer{{SNI: "api.stripe.com"}}}}})))
	s := NewStage(StageConfig{Policies: policies})
	cidr := connect(billingPod, 1, "10.1.0.1:443")
	pending := connect(billingPod, 2, "203.0.113.5:443")
	shop := connect(shopPod, 3, "198.51.100.7:443")
	s.JudgeBatch([]enrich.Event{
		cidr, hello(cidr, "api.stripe.com"), // billing-egress/egress[0] and billing-next/egress[0], once each
		pending, hello(pending, "api.stripe.com"), // billing-sni/egress[0] and billing-next/egress[1]
		shop, hello(shop, "api.shop.example"), // shop-next/egress[0]
		connect(shopPod, 4, "192.0.2.1:80"), // shop-next/egress[1]
		connect(shopPod, 5, "192.0.2.1:80"),
		connect(billingPod, 6, "172.16.0.1:80"), // nothing
	}, nil, t0)
	got, overflow := ruleHits(policies.Current())
	want := map[string]uint64{
		"billing-egress/egress[0]": 1,
		"billing-next/egress[0]":   1,
		"billing-next/egress[1]":   1,
		"shop-next/egress[0]":      1,
		"shop-next/egress[1]":      2,
		"billing-sni/egress[0]":    1,
	}
	if len(got) != len(want) || overflow != 0 {
		t.Fatalf("hits %v, overflow %d; want %v", got, overflow, want)
	}
	for r, n := range want {
		if got[r] != n {
			t.Errorf("%s: %d hits, want %d", r, got[r], n)
		}
	}
}

// A reload keeps the counts of the rules it keeps, and stops reporting
// those it drops.
func TestRuleHitsFollowReload(t *testing.T) {
	ps := stagedPolicies()
	p := &Policies{}
	p.install(ps)
	s := NewStage(StageConfig{Policies: p})
	s.JudgeBatch([]enrich.Event{connect(billingPod, 1, "10.1.0.1:443"), connect(shopPod, 2, "192.0.2.1:80")}, nil, t0)

	p.install(ps[:2]) // shop-next leaves
	got, _ := ruleHits(p)
	if len(got) != 3 || got["billing-egress/egress[0]"] != 1 || got["billing-next/egress[0]"] != 1 || got["billing-next/egress[1]"] != 0 {
		t.Errorf("after the reload: %v", got)
	}
	s.JudgeBatch([]enrich.Event{connect(billingPod, 3, "10.1.0.1:443")}, nil, t0)
	p.install(ps) // shop-next comes back, from zero
	got, _ = ruleHits(p)
	if got["billing-egress/egress[0]"] != 2 || got["shop-next/egress[1]"] != 0 {
		t.Errorf("after the second reload: %v", got)
	}
}

// Past MaxRuleHitSeries rules, hits are counted together.
func TestRuleHitsOverflow(t *testing.T) {
	var ps []Policy
	for i := range MaxRuleHitSeries/2 + 1 {
		ps = append(ps, Policy{Name: "team-" + strconv.Itoa(i), Subject: Subject{Namespace: "team-" + strconv.Itoa(i)}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.0.0.0/8")}}}, {To: []Peer{{CIDR: mustPrefix("192.0.2.0/24")}}},
		}})
	}
	ps[len(ps)-1].Subject.Namespace = "payments"
	p := &Policies{}
	p.install(ps)
	s := NewStage(StageConfig{Policies: p})
	s.JudgeBatch([]enrich.Event{connect(billingPod, 1, "10.1.0.1:443"), connect(billingPod, 2, "192.0.2.1:443"), connect(billingPod, 3, "192.0.2.1:443")}, nil, t0)
	got, overflow := ruleHits(p)
	// The last policy, billing's, is past the bound.
	last := "team-" + strconv.Itoa(MaxRuleHitSeries/2)
	if _, ok := got[last+"/egress[0]"]; ok || len(got) != MaxRuleHitSeries || overflow != 3 {
		t.Errorf("%d series, overflow %d; want %d and 3", len(got), overflow, MaxRuleHitSeries)
	}
	// Now within the bound: billing's rules count apart, from zero, and
	// the overflow count stays.
	p.install(ps[1:])
	s.JudgeBatch([]enrich.Event{connect(billingPod, 4, "10.1.0.1:443")}, nil, t0)
	got, overflow = ruleHits(p)
	if got[last+"/egress[0]"] != 1 || len(got) != MaxRuleHitSeries || overflow != 3 {
		t.Errorf("after a reload: %d series, overflow %d, %s %d hits", len(got), overflow, last, got[last+"/egress[0]"])
	}
}

// Staged scopes and rule hits keep the stage allocation-free.
func TestStageAllocsStaged(t *testing.T) {
	ps := benchPolicies(1000)
	for i := range ps {
		if i%2 == 0 {
			staged := ps[i]
			staged.Name += "-next"
			staged.Mode = Audit
			ps = append(ps, staged)
		}
	}
	s := NewStage(StageConfig{Policies: NewPolicies(Compile(ps))})
	batch := stageBatch(1000, 256)
	out := make([]Event, 0, 2*len(batch))
	now := t0
	round := func() {
		renumber(batch, uint64(len(batch)))
		now = now.Add(time.Millisecond)
		out = s.JudgeBatch(batch, out[:0], now)
		out = s.Expire(out, now, false)
	}
	for range 2000 {
		round()
	}
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
	if st := s.Stats(); st.WouldViolate == 0 || st.Allowed == 0 {
		t.Errorf("the batch does not cover staged verdicts: %+v", st)
	}
}
