package scope

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
)

var (
	t0      = time.Date(2026, 11, 27, 4, 32, 4, 0, time.UTC)
	shopPod = &enrich.Pod{UID: "u2", Namespace: "shop", Name: "cart-1", ServiceAccount: "cart"}
)

// stagePolicies: billing may call 10/8 and *.stripe.com on 443, and
// api.stripe.com by SNI; shop may call api.shop.example by SNI only.
func stagePolicies() *Policies {
	return NewPolicies(Compile([]Policy{
		{Name: "billing-egress", Subject: Subject{Namespace: "payments", ServiceAccount: "billing"}, Egress: []Rule{
			{To: []Peer{{CIDR: mustPrefix("10.0.0.0/8")}, {DNS: "*.stripe.com"}}, Ports: []PortRange{{443, 443}}},
			{To: []Peer{{SNI: "api.stripe.com"}}, Ports: []PortRange{{443, 443}}},
		}},
		{Name: "shop-egress", Subject: Subject{Namespace: "shop"}, Egress: []Rule{
			{To: []Peer{{SNI: "api.shop.example"}}, Ports: []PortRange{{443, 443}}},
		}},
	}))
}

// connect is an established connect of cookie from pod to dst.
func connect(pod *enrich.Pod, cookie uint64, dst string, mod ...func(*enrich.Event)) enrich.Event {
	ev := call(pod, dst, func(ev *enrich.Event) {
		ev.Cookie = cookie
		ev.Outcome = collector.OutcomeEstablished
	})
	for _, f := range mod {
		f(ev)
	}
	return *ev
}

// hello is the tls event of connect c, naming sni.
func hello(c enrich.Event, sni string) enrich.Event {
	c.Kind = collector.KindTLS
	c.Hello = &tlshello.ClientHello{SNI: sni}
	c.DstName, c.NameSource = sni, enrich.NameSourceSNI
	return c
}

func resolved(name string) func(*enrich.Event) {
	return func(ev *enrich.Event) { ev.DstName, ev.NameSource = name, enrich.NameSourceDNS }
}

func outcome(o collector.Outcome) func(*enrich.Event) {
	return func(ev *enrich.Event) { ev.Outcome = o }
}

// step feeds the stage a batch at t0+at, or, with no events, expires.
type step struct {
	at     time.Duration
	events []enrich.Event
	all    bool
}

type want struct {
	kind    collector.Kind
	cookie  uint64
	verdict Verdict
	reason  string
}

func TestStage(t *testing.T) {
	billingPending := connect(billingPod, 7, "203.0.113.5:443")
	billingDNS := connect(billingPod, 8, "203.0.113.5:443", resolved("api.stripe.com"))
	billingCIDR := connect(billingPod, 9, "10.96.0.15:443")
	shop := connect(shopPod, 10, "198.51.100.7:443")

	for _, tc := range []struct {
		name  string
		steps []step
		want  []want
		stats StageStats
	}{{
		name:  "allowed by cidr",
		steps: []step{{events: []enrich.Event{billingCIDR}}, {at: time.Minute}},
		want:  []want{{collector.KindConnect, 9, Allowed, "allowed by billing-egress/egress[0] for 10.96.0.15:443"}},
		stats: StageStats{Allowed: 1},
	}, {
		name:  "violation",
		steps: []step{{events: []enrich.Event{connect(billingPod, 1, "172.16.0.1:80")}}},
		want:  []want{{collector.KindConnect, 1, Violation, "no egress rule of billing-egress allows 172.16.0.1:80"}},
		stats: StageStats{Violation: 1},
	}, {
		name:  "unscoped",
		steps: []step{{events: []enrich.Event{connect(nil, 1, "10.0.0.1:443")}}},
		want:  []want{{collector.KindConnect, 1, Unscoped, "no CallScope binds this caller"}},
		stats: StageStats{Unscoped: 1},
	}, {
		name: "pending, then an allowed SNI",
		steps: []step{
			{events: []enrich.Event{billingPending}},
			{at: 30 * time.Millisecond, events: []enrich.Event{hello(billingPending, "api.stripe.com")}},
			{at: time.Minute, all: true},
		},
		want: []want{
			{collector.KindConnect, 7, Pending, "allowed only if the TLS server name matches an sni rule"},
			{collector.KindTLS, 7, Allowed, "allowed by billing-egress/egress[1] for TLS server name api.stripe.com"},
		},
		stats: StageStats{Pending: 1, Allowed: 1},
	}, {
		name: "pending, then another SNI",
		steps: []step{
			{events: []enrich.Event{billingPending}},
			{at: time.Second, events: []enrich.Event{hello(billingPending, "evil.example")}},
			{at: time.Minute},
		},
		want: []want{
			{collector.KindConnect, 7, Pending, ""},
			{collector.KindTLS, 7, Violation, "no egress rule of billing-egress allows 203.0.113.5:443 (evil.example)"},
		},
		stats: StageStats{Pending: 1, Violation: 1},
	}, {
		name: "pending, then a ClientHello without a server name",
		steps: []step{
			{events: []enrich.Event{billingPending}},
			{events: []enrich.Event{hello(billingPending, "")}},
		},
		want: []want{
			{collector.KindConnect, 7, Pending, ""},
			{collector.KindTLS, 7, Violation, "no egress rule of billing-egress allows 203.0.113.5:443 (the ClientHello named no server)"},
		},
		stats: StageStats{Pending: 1, Violation: 1, Findings: [NumFindings]uint64{NoSNI: 1}},
	}, {
		name: "pending with a DNS name, then another SNI",
		steps: []step{
			{events: []enrich.Event{connect(billingPod, 3, "203.0.113.5:443", resolved("www.example.org"))}},
			{events: []enrich.Event{hello(connect(billingPod, 3, "203.0.113.5:443"), "evil.example")}},
		},
		want: []want{
			{collector.KindConnect, 3, Pending, ""},
			{collector.KindTLS, 3, Violation, "no egress rule of billing-egress allows 203.0.113.5:443 (DNS name www.example.org, TLS server name evil.example)"},
		},
		stats: StageStats{Pending: 1, Violation: 1},
	}, {
		name: "pending, then no ClientHello in time",
		steps: []step{
			{events: []enrich.Event{billingPending}},
			{at: 9 * time.Second},
			{at: 10 * time.Second},
			{at: time.Minute},
		},
		want: []want{
			{collector.KindConnect, 7, Pending, ""},
			{collector.KindVerdict, 7, Violation, "no TLS ClientHello named an allowed server within 10s"},
		},
		stats: StageStats{Pending: 1, Violation: 1, TimedOut: 1},
	}, {
		name: "pending when the agent stops",
		steps: []step{
			{events: []enrich.Event{billingPending}},
			{at: 1500 * time.Millisecond, all: true},
		},
		want: []want{
			{collector.KindConnect, 7, Pending, ""},
			{collector.KindVerdict, 7, Violation, "the agent stopped before a TLS ClientHello named an allowed server (pending for 1.5s)"},
		},
		stats: StageStats{Pending: 1, Violation: 1, Stopped: 1},
	}, {
		name:  "refused, with only sni rules: a violation at once",
		steps: []step{{events: []enrich.Event{connect(shopPod, 4, "198.51.100.7:443", outcome(collector.OutcomeRefused))}}, {at: time.Minute, all: true}},
		want:  []want{{collector.KindConnect, 4, Violation, "no egress rule of shop-egress allows 198.51.100.7:443"}},
		stats: StageStats{Violation: 1},
	}, {
		name:  "timed out, with only sni rules",
		steps: []step{{events: []enrich.Event{connect(shopPod, 4, "198.51.100.7:443", outcome(collector.OutcomeTimeout))}}},
		want:  []want{{collector.KindConnect, 4, Violation, ""}},
		stats: StageStats{Violation: 1},
	}, {
		name: "allowed by DNS name; the tls event stays allowed whatever its SNI",
		steps: []step{
			{events: []enrich.Event{billingDNS}},
			{events: []enrich.Event{hello(billingDNS, "evil.example")}},
			{at: time.Minute, all: true},
		},
		want: []want{
			{collector.KindConnect, 8, Allowed, "allowed by billing-egress/egress[0] for DNS name api.stripe.com"},
			{collector.KindTLS, 8, Allowed, "allowed by billing-egress/egress[0] for DNS name api.stripe.com"},
		},
		stats: StageStats{Allowed: 2},
	}, {
		name: "allowed by cidr; the tls event stays allowed whatever its SNI",
		steps: []step{
			{events: []enrich.Event{billingCIDR}},
			{events: []enrich.Event{hello(billingCIDR, "evil.example")}},
		},
		want: []want{
			{collector.KindConnect, 9, Allowed, ""},
			{collector.KindTLS, 9, Allowed, "allowed by billing-egress/egress[0] for 10.96.0.15:443"},
		},
		stats: StageStats{Allowed: 2},
	}, {
		name: "the socket connects again before its ClientHello",
		steps: []step{
			{events: []enrich.Event{shop}},
			{at: 2 * time.Second, events: []enrich.Event{shop}},
		},
		want: []want{
			{collector.KindConnect, 10, Pending, ""},
			{collector.KindConnect, 10, Pending, ""},
			{collector.KindVerdict, 10, Violation, "no TLS ClientHello named an allowed server within 2s"},
		},
		stats: StageStats{Pending: 2, Violation: 1, TimedOut: 1, PendingNow: 1},
	}, {
		name: "calls interleave",
		steps: []step{
			{events: []enrich.Event{
				connect(shopPod, 1, "198.51.100.7:443"), connect(shopPod, 2, "198.51.100.7:443"), connect(shopPod, 3, "198.51.100.7:443"),
			}},
			{at: 5 * time.Second, events: []enrich.Event{
				connect(shopPod, 4, "198.51.100.7:443"), hello(connect(shopPod, 2, "198.51.100.7:443"), "api.shop.example"),
			}},
			{at: 10 * time.Second},
			{at: 15 * time.Second},
		},
		want: []want{
			{collector.KindConnect, 1, Pending, ""},
			{collector.KindConnect, 2, Pending, ""},
			{collector.KindConnect, 3, Pending, ""},
			{collector.KindConnect, 4, Pending, ""},
			{collector.KindTLS, 2, Allowed, ""},
			{collector.KindVerdict, 1, Violation, ""},
			{collector.KindVerdict, 3, Violation, ""},
			{collector.KindVerdict, 4, Violation, ""},
		},
		stats: StageStats{Pending: 4, Allowed: 1, Violation: 3, TimedOut: 3},
	}, {
		name: "loss and exit pass through",
		steps: []step{{events: []enrich.Event{
			{Event: collector.Event{Kind: collector.KindLoss, Lost: 3, LossStage: collector.StageKernel}},
			{Event: collector.Event{Kind: collector.KindExit, PID: 42}},
		}}},
		want: []want{{collector.KindLoss, 0, 0, ""}, {collector.KindExit, 0, 0, ""}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStage(StageConfig{Policies: stagePolicies()})
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
				if ev.Kind != w.kind || ev.Cookie != w.cookie || ev.Scope.Verdict != w.verdict {
					t.Errorf("event %d: %v %d %v; want %v %d %v", i, ev.Kind, ev.Cookie, ev.Scope.Verdict, w.kind, w.cookie, w.verdict)
				}
				if reason := string(AppendReason(nil, ev)); w.reason != "" && reason != w.reason {
					t.Errorf("event %d: reason %q, want %q", i, reason, w.reason)
				}
			}
			if st := s.Stats(); st != tc.stats {
				t.Errorf("stats %+v, want %+v", st, tc.stats)
			}
		})
	}
}

func describeEvents(evs []Event) string {
	var s string
	for _, ev := range evs {
		s += fmt.Sprintf("  %v conn %d %v %q\n", ev.Kind, ev.Cookie, ev.Scope.Verdict, AppendReason(nil, &ev))
	}
	return s
}

// The verdict event stands for the connect: same connection, caller and
// destination, at the time it was judged.
func TestStageVerdictEventCopiesConnect(t *testing.T) {
	s := NewStage(StageConfig{Policies: stagePolicies(), PendingTimeout: 3 * time.Second})
	c := connect(billingPod, 77, "203.0.113.5:443", resolved("www.example.org"))
	c.PID, c.Src, c.Time = 4242, netip.MustParseAddrPort("10.0.3.7:43210"), t0.UnixNano()
	out := s.JudgeBatch([]enrich.Event{c}, nil, t0)
	out = s.Expire(out, t0.Add(3*time.Second), false)
	if len(out) != 2 {
		t.Fatalf("got %d events:\n%s", len(out), describeEvents(out))
	}
	v := out[1]
	if v.Kind != collector.KindVerdict || v.Time != t0.Add(3*time.Second).UnixNano() {
		t.Errorf("verdict event %v at %d", v.Kind, v.Time)
	}
	want := c
	want.Kind, want.Time = v.Kind, v.Time
	if !reflect.DeepEqual(v.Event, want) {
		t.Errorf("verdict event %+v\nwant the connect %+v", v.Event, want)
	}
	if v.Scope.Scopes != "billing-egress" || v.Scope.Cause != CauseNoHello || v.Scope.Rule != "" {
		t.Errorf("judgement %+v", v.Scope)
	}
	if got, want := string(AppendReason(nil, &v)), "no TLS ClientHello named an allowed server within 3s"; got != want {
		t.Errorf("reason %q, want %q", got, want)
	}
	// A ClientHello after the verdict is judged on its own.
	out = s.JudgeBatch([]enrich.Event{hello(c, "api.stripe.com")}, out[:0], t0.Add(4*time.Second))
	if out[0].Scope.Verdict != Allowed {
		t.Errorf("late ClientHello: %v", out[0].Scope.Verdict)
	}
}

func TestStageTrackingFull(t *testing.T) {
	var log syncBuffer
	s := NewStage(StageConfig{Policies: stagePolicies(), MaxPending: 2, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	var out []Event
	for i := range 5 {
		out = s.JudgeBatch([]enrich.Event{connect(shopPod, uint64(i+1), "198.51.100.7:443")}, out, t0.Add(time.Duration(i)*time.Second))
	}
	// Each connect past the second closes the oldest call still pending.
	var closed []uint64
	for _, ev := range out {
		if ev.Kind == collector.KindVerdict {
			closed = append(closed, ev.Cookie)
			if ev.Scope.Verdict != Violation || ev.Scope.Cause != CauseTrackingFull {
				t.Errorf("verdict event %+v", ev.Scope)
			}
		}
	}
	if fmt.Sprint(closed) != "[1 2 3]" {
		t.Errorf("closed %v, want [1 2 3]", closed)
	}
	if got, want := string(AppendReason(nil, &out[3])), "too many calls awaited their TLS ClientHello to keep awaiting this one (pending for 2s)"; got != want {
		t.Errorf("reason %q, want %q", got, want)
	}
	st := s.Stats()
	if st.TrackingFull != 3 || st.PendingNow != 2 || st.Pending != 5 || st.Violation != 3 {
		t.Errorf("stats %+v", st)
	}
	// The two still pending are 4 and 5, and still settle.
	out = s.JudgeBatch([]enrich.Event{hello(connect(shopPod, 5, "198.51.100.7:443"), "api.shop.example")}, out[:0], t0.Add(5*time.Second))
	out = s.Expire(out, t0.Add(time.Minute), false)
	if len(out) != 2 || out[0].Scope.Verdict != Allowed || out[1].Cookie != 4 || out[1].Kind != collector.KindVerdict {
		t.Errorf("got\n%s", describeEvents(out))
	}
	if st := s.Stats(); st.PendingNow != 0 {
		t.Errorf("%d still pending", st.PendingNow)
	}
	// Said once, not per call.
	if n := strings.Count(log.String(), "too many calls await"); n != 1 {
		t.Errorf("logged %d times:\n%s", n, log.String())
	}
}

func TestStageWithoutPolicies(t *testing.T) {
	s := NewStage(StageConfig{})
	c := connect(shopPod, 1, "198.51.100.7:443")
	out := s.JudgeBatch([]enrich.Event{c, hello(c, "x")}, nil, t0)
	out = s.Expire(out, t0.Add(time.Hour), true)
	if len(out) != 2 || out[0].Scope != (Judgement{}) || out[1].Scope != (Judgement{}) {
		t.Errorf("got\n%s", describeEvents(out))
	}
	if st := s.Stats(); st != (StageStats{}) {
		t.Errorf("stats %+v", st)
	}
	if len(AppendReason(nil, &out[0])) != 0 {
		t.Error("a reason with no verdict")
	}
}

// A reload applies from the next batch on.
func TestStageFollowsReload(t *testing.T) {
	p := stagePolicies()
	s := NewStage(StageConfig{Policies: p})
	c := connect(shopPod, 1, "198.51.100.7:80")
	if out := s.JudgeBatch([]enrich.Event{c}, nil, t0); out[0].Scope.Verdict != Violation {
		t.Fatalf("before: %v", out[0].Scope.Verdict)
	}
	p.cur.Store(Compile([]Policy{{Name: "open", Subject: Subject{Namespace: "shop"}, Egress: []Rule{{To: []Peer{{CIDR: mustPrefix("0.0.0.0/0")}}}}}}))
	if out := s.JudgeBatch([]enrich.Event{c}, nil, t0); out[0].Scope.Verdict != Allowed || out[0].Scope.Rule != "open/egress[0]" {
		t.Fatalf("after: %+v", out[0].Scope)
	}
}

// stageBatch is a batch from callers of many scopes: calls allowed by
// cidr and by DNS name, violations, unscoped callers, and calls pending
// until their ClientHello, which comes in the same batch.
func stageBatch(scopes, size int) []enrich.Event {
	pods := make([]*enrich.Pod, 64)
	for i := range pods {
		n := i * scopes / len(pods)
		pods[i] = &enrich.Pod{UID: "u" + strconv.Itoa(n), Namespace: "team-" + strconv.Itoa(n), ServiceAccount: "sa"}
	}
	batch := make([]enrich.Event, 0, size)
	for i := 0; len(batch) < size; i++ {
		pod := pods[i%len(pods)]
		n, _ := strconv.Atoi(pod.Namespace[len("team-"):])
		cookie := uint64(i + 1)
		switch i % 5 {
		case 0:
			batch = append(batch, connect(pod, cookie, "10."+strconv.Itoa(n%256)+".1.2:443"))
		case 1:
			batch = append(batch, connect(pod, cookie, "203.0.113.9:443", resolved("api.svc-"+strconv.Itoa(n)+".example")))
		case 2:
			batch = append(batch, connect(pod, cookie, "172.16.0.1:443", outcome(collector.OutcomeRefused)))
		case 3:
			batch = append(batch, connect(nil, cookie, "10.0.0.1:443"))
		case 4:
			c := connect(pod, cookie, "198.51.100.7:443")
			batch = append(batch, c, hello(c, "api-"+strconv.Itoa(n)+".example"))
		}
	}
	return batch
}

// renumber gives the batch's connections new cookies, as a new batch of
// calls from the same callers would have.
func renumber(batch []enrich.Event, by uint64) {
	for i := range batch {
		batch[i].Cookie += by
	}
}

// steadyStage is a stage with 1,000 scopes loaded, and a round that judges
// a batch of 256 mixed calls, already run until the names of DNS-allowed
// calls fill their ring: the steady state.
func steadyStage() (s *Stage, batch []enrich.Event, round func()) {
	s = NewStage(StageConfig{Policies: NewPolicies(Compile(benchPolicies(1000)))})
	batch = stageBatch(1000, 256)
	out := make([]Event, 0, 2*len(batch))
	now := t0
	round = func() {
		renumber(batch, uint64(len(batch)))
		now = now.Add(time.Millisecond)
		out = s.JudgeBatch(batch, out[:0], now)
		out = s.Expire(out, now, false)
	}
	for range 2000 {
		round()
	}
	return s, batch, round
}

func TestStageAllocs(t *testing.T) {
	s, _, round := steadyStage()
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
	st := s.Stats()
	if st.Allowed == 0 || st.Violation == 0 || st.Unscoped == 0 || st.Pending == 0 || st.PendingNow != 0 {
		t.Errorf("the batch does not cover every verdict: %+v", st)
	}
}

// BenchmarkJudgeBatch: verdicts per second through the stage, with 1,000
// scopes loaded.
func BenchmarkJudgeBatch(b *testing.B) {
	_, batch, round := steadyStage()
	b.ReportAllocs()
	for b.Loop() {
		round()
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "verdicts/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/verdict")
}

func TestRecentNames(t *testing.T) {
	r := newRecentNames(3)
	for i := range uint64(5) {
		r.put(i, "n"+strconv.FormatUint(i, 10))
	}
	r.put(3, "again") // in place: 2 stays the oldest
	r.put(5, "n5")
	for cookie, want := range map[uint64]string{0: "", 1: "", 2: "", 3: "again", 4: "n4", 5: "n5"} {
		if got, ok := r.get(cookie); got != want || ok != (want != "") {
			t.Errorf("get(%d) = %q, %v; want %q", cookie, got, ok, want)
		}
	}
	if len(r.index) != 3 {
		t.Errorf("%d names held, want 3", len(r.index))
	}
}

// TestStageFindings: findings come with or without policies, whatever the
// verdict, and a verdict event repeats its connect's without counting them
// again.
func TestStageFindings(t *testing.T) {
	plain := connect(billingPod, 9, "203.0.113.5:443", func(ev *enrich.Event) { ev.Plaintext = true })
	for _, p := range []*Policies{nil, stagePolicies()} {
		s := NewStage(StageConfig{Policies: p})
		got := s.JudgeBatch([]enrich.Event{plain}, nil, t0)
		got = s.Expire(got, t0.Add(time.Minute), false)
		wantKinds := []collector.Kind{collector.KindConnect}
		if p != nil {
			// Pending on an SNI rule, closed by a verdict event.
			wantKinds = append(wantKinds, collector.KindVerdict)
		}
		if len(got) != len(wantKinds) {
			t.Fatalf("policies %v: %d events, want %d:\n%s", p != nil, len(got), len(wantKinds), describeEvents(got))
		}
		for i, ev := range got {
			if ev.Kind != wantKinds[i] || !ev.Findings.Has(Plaintext) || ev.Findings.Has(NoSNI) {
				t.Errorf("policies %v: event %d: %v with findings %b, want %v with plaintext", p != nil, i, ev.Kind, ev.Findings, wantKinds[i])
			}
		}
		if n := s.Stats().Findings; n != [NumFindings]uint64{Plaintext: 1} {
			t.Errorf("policies %v: findings counted %v, want plaintext once", p != nil, n)
		}
	}
}
