package exporter

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

func TestMetricsWritten(t *testing.T) {
	m := NewMetrics(Sources{})
	evs := make([]scope.Event, 4)
	for i := range evs {
		evs[i].Kind = collector.KindConnect
	}
	evs[2].Kind = collector.KindLoss
	evs[3].Kind = collector.KindTLS
	m.Written(evs)
	m.Written(evs[:1])
	if c, l, tl := testutil.ToFloat64(m.events[collector.KindConnect]), testutil.ToFloat64(m.events[collector.KindLoss]),
		testutil.ToFloat64(m.events[collector.KindTLS]); c != 3 || l != 1 || tl != 1 {
		t.Errorf("connect %v loss %v tls %v, want 3, 1 and 1", c, l, tl)
	}
}

func TestMetricsPolicyObjects(t *testing.T) {
	st := scope.ObjectStats{Valid: 3, Stale: 1, Invalid: 2, Rejected: 5, WatchFailures: 7, Synced: true}
	m := NewMetrics(Sources{Objects: func() scope.ObjectStats { return st }})
	want := `
# HELP callscope_policy_objects CallScope objects of the cluster, by state: valid (in force as stored), stale (refused as stored; its last valid version is in force), invalid (refused, or named as a file's policy: it binds nothing).
# TYPE callscope_policy_objects gauge
callscope_policy_objects{state="invalid"} 2
callscope_policy_objects{state="stale"} 1
callscope_policy_objects{state="valid"} 3
# HELP callscope_policy_objects_rejected_total Versions of CallScope objects the agent refused, each logged with its problems.
# TYPE callscope_policy_objects_rejected_total counter
callscope_policy_objects_rejected_total 5
# HELP callscope_policy_objects_synced 1 while the CallScope objects in force are the API server's (read, and the watch up), else 0.
# TYPE callscope_policy_objects_synced gauge
callscope_policy_objects_synced 1
# HELP callscope_policy_objects_watch_failures_total Requests to list or watch CallScope objects that failed (the API server unreachable or refusing); the objects last read stay in force.
# TYPE callscope_policy_objects_watch_failures_total counter
callscope_policy_objects_watch_failures_total 7
`
	names := []string{"callscope_policy_objects", "callscope_policy_objects_rejected_total", "callscope_policy_objects_synced", "callscope_policy_objects_watch_failures_total"}
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// Without Kubernetes there are no objects to count, and no series.
	if n, err := testutil.GatherAndCount(NewMetrics(Sources{}).Registry, names...); err != nil || n != 0 {
		t.Errorf("without objects: %d series (%v), want none", n, err)
	}
}

func TestMetricsFindings(t *testing.T) {
	var st scope.StageStats
	st.Findings[scope.HumanUse] = 2
	st.Findings[scope.NoSNI] = 5
	m := NewMetrics(Sources{Scope: func() scope.StageStats { return st }})
	want := `
# HELP callscope_findings_total Calls carrying each finding of the catalogue (human_use, plaintext, cleartext_protocol, legacy_tls, no_sni, cross_environment), whatever their verdict.
# TYPE callscope_findings_total counter
callscope_findings_total{finding="cleartext_protocol"} 0
callscope_findings_total{finding="cross_environment"} 0
callscope_findings_total{finding="human_use"} 2
callscope_findings_total{finding="legacy_tls"} 0
callscope_findings_total{finding="no_sni"} 5
callscope_findings_total{finding="plaintext"} 0
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "callscope_findings_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsCallees(t *testing.T) {
	m := NewMetrics(Sources{Enrich: func() enrich.Stats {
		return enrich.Stats{CalleeFound: 7, CalleeUnknown: 3, CalleeUnsynced: 2,
			Callees: enrich.CalleeStats{Addresses: 120, WatchErrors: 1}}
	}})
	want := `
# HELP callscope_callee_addresses Cluster IPs, pod IPs and endpoint addresses the callee index names now.
# TYPE callscope_callee_addresses gauge
callscope_callee_addresses 120
# HELP callscope_callee_lookups_total Destination addresses looked up in the index of the cluster's Services, endpoints and pods, by result: found, unknown (not named by the index, addresses outside the cluster included), unsynced (not found before the index had listed the cluster).
# TYPE callscope_callee_lookups_total counter
callscope_callee_lookups_total{result="found"} 7
callscope_callee_lookups_total{result="unknown"} 3
callscope_callee_lookups_total{result="unsynced"} 2
# HELP callscope_callee_watch_errors_total Failed lists and watches of the cluster's Services, EndpointSlices and pods.
# TYPE callscope_callee_watch_errors_total counter
callscope_callee_watch_errors_total 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"callscope_callee_lookups_total", "callscope_callee_addresses", "callscope_callee_watch_errors_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsVerdicts(t *testing.T) {
	st := scope.StageStats{Allowed: 4, Violation: 3, Unscoped: 2, Pending: 1, WouldViolate: 5}
	m := NewMetrics(Sources{Scope: func() scope.StageStats { return st }})
	want := `
# HELP callscope_verdicts_total Verdicts given on calls, by verdict: allowed, violation, unscoped, pending, would_violate (outside a staged scope, mode: audit; counted too when beside an enforced verdict). A pending call gets a second, final verdict.
# TYPE callscope_verdicts_total counter
callscope_verdicts_total{verdict="allowed"} 4
callscope_verdicts_total{verdict="pending"} 1
callscope_verdicts_total{verdict="unscoped"} 2
callscope_verdicts_total{verdict="violation"} 3
callscope_verdicts_total{verdict="would_violate"} 5
# HELP callscope_violations_total Calls outside the scope of the CallScopes binding their caller.
# TYPE callscope_violations_total counter
callscope_violations_total 3
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "callscope_verdicts_total", "callscope_violations_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsRuleHits(t *testing.T) {
	policies := scope.NewPolicies(scope.Compile([]scope.Policy{
		{Name: "billing-egress", Subject: scope.Subject{Namespace: "payments"}, Egress: []scope.Rule{
			{To: []scope.Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}},
			{To: []scope.Peer{{CIDR: netip.MustParsePrefix("192.0.2.0/24")}}},
		}},
		{Name: "billing-next", Mode: scope.Audit, Subject: scope.Subject{Namespace: "payments"}, Egress: []scope.Rule{
			{To: []scope.Peer{{CIDR: netip.MustParsePrefix("10.1.0.0/16")}}},
		}},
	}))
	stage := scope.NewStage(scope.StageConfig{Policies: policies})
	call := enrich.Event{Pod: &enrich.Pod{Namespace: "payments"}}
	call.Kind, call.Outcome = collector.KindConnect, collector.OutcomeRefused
	call.Dst = netip.MustParseAddrPort("10.1.2.3:443")
	stage.JudgeBatch([]enrich.Event{call, call}, nil, time.Now())

	m := NewMetrics(Sources{RuleHits: policies.RuleHits})
	want := `
# HELP callscope_rule_hits_overflow_total Calls allowed by rules past the first 10000 in force, which get no callscope_rule_hits_total series of their own.
# TYPE callscope_rule_hits_overflow_total counter
callscope_rule_hits_overflow_total 0
# HELP callscope_rule_hits_total Calls each egress rule in force allowed, by policy and rule (as in scope.rule), staged rules included. Only the rules in force are exported, the first 10000 of them; a rule's count starts again from zero if it leaves the policies and comes back.
# TYPE callscope_rule_hits_total counter
callscope_rule_hits_total{policy="billing-egress",rule="billing-egress/egress[0]"} 2
callscope_rule_hits_total{policy="billing-egress",rule="billing-egress/egress[1]"} 0
callscope_rule_hits_total{policy="billing-next",rule="billing-next/egress[0]"} 2
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "callscope_rule_hits_total", "callscope_rule_hits_overflow_total"); err != nil {
		t.Error(err)
	}
	// Without policies, no series.
	if n, err := testutil.GatherAndCount(NewMetrics(Sources{}).Registry, "callscope_rule_hits_total", "callscope_rule_hits_overflow_total"); err != nil || n != 0 {
		t.Errorf("without policies: %d series (%v), want none", n, err)
	}
}
