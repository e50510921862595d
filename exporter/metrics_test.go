package exporter

import (
	"strings"
	"testing"

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
