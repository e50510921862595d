package exporter

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// Metrics holds the agent's Prometheus metrics. Counts kept by other stages
// are read from their Stats when scraped, so the event path pays nothing
// for them. Label values come from fixed sets: never an address, port,
// name, pid or container id.
type Metrics struct {
	Registry *prometheus.Registry

	events       [collector.NumKinds]prometheus.Counter // by kind
	sinkFailures *prometheus.CounterVec
}

// Sources are the stages whose counters the metrics expose.
type Sources struct {
	Collector func() collector.Stats
	Enrich    func() enrich.Stats
	Scope     func() scope.StageStats
	// Reloads counts policy loads by result; nil when no policy is given.
	Reloads func() (ok, failed uint64)
	// RuleHits reports the calls each rule in force allowed, and returns
	// those past scope.MaxRuleHitSeries rules; nil without policies.
	RuleHits func(fn func(policy, rule string, hits uint64)) (overflow uint64)
	// Objects counts the cluster's CallScope objects; nil without
	// Kubernetes.
	Objects  func() scope.ObjectStats
	Programs func() []collector.ProgramStats
	// Features are what the kernel let the programs do.
	Features func() []collector.Feature
}

// NewMetrics registers the metrics, with the Go runtime and process ones.
func NewMetrics(src Sources) *Metrics {
	reg := prometheus.NewRegistry()
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callscope_events_total",
		Help: "Events written to the stream, by kind.",
	}, []string{"kind"})
	m := &Metrics{
		Registry: reg,
		sinkFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callscope_sink_write_failures_total",
			Help: "Batches of events a sink failed to write, by sink.",
		}, []string{"sink"}),
	}
	for _, k := range []collector.Kind{collector.KindConnect, collector.KindTLS, collector.KindVerdict, collector.KindLoss} {
		m.events[k] = events.WithLabelValues(k.String())
	}
	reg.MustRegister(events, m.sinkFailures,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stageCollector{src: src})
	return m
}

// Written counts events that reached the stream.
func (m *Metrics) Written(events []scope.Event) {
	var n [collector.NumKinds]int
	for i := range events {
		if k := events[i].Kind; int(k) < len(n) {
			n[k]++
		}
	}
	// An atomic add per kind and batch rather than one per event.
	for k, c := range n {
		if c > 0 && m.events[k] != nil {
			m.events[k].Add(float64(c))
		}
	}
}

// SinkFailed counts a batch a sink could not write.
func (m *Metrics) SinkFailed(sink string) { m.sinkFailures.WithLabelValues(sink).Inc() }

var (
	lostDesc = prometheus.NewDesc("callscope_events_lost_total",
		"Events lost before they reached the stream, by stage and reason.", []string{"stage", "reason"}, nil)
	exitsLostDesc = prometheus.NewDesc("callscope_process_exits_lost_total",
		"Process exits the kernel could not report (ring buffer full): no event is lost, the process's cache entry ages out instead.", nil, nil)
	execsLostDesc = prometheus.NewDesc("callscope_process_execs_lost_total",
		"execve calls the kernel could not report (ring buffer full): a process gone before /proc is read then has no exe.", nil, nil)
	uncheckedDesc = prometheus.NewDesc("callscope_plaintext_unchecked_total",
		"Established connects to a TLS port whose first data went unchecked, so that they carry no plaintext finding, by reason: held_full (too many connects awaiting their first data), ring_buffer_full (the kernel could not report a plaintext first write).", []string{"reason"}, nil)
	receivedDesc = prometheus.NewDesc("callscope_kernel_events_total",
		"Events read from the kernel ring buffer and handed to the pipeline.", nil, nil)
	unresolvedDesc = prometheus.NewDesc("callscope_identity_unresolved_total",
		"Identity lookups that found nothing, by what was looked up: the process (gone before /proc was read), the cgroup (removed before its path was resolved) or the pod (not known to the Kubernetes API in time).",
		[]string{"kind"}, nil)
	podWaitsDesc = prometheus.NewDesc("callscope_identity_pod_waits_total",
		"Events held back because their pod was not known to the Kubernetes API yet.", nil, nil)
	verdictsDesc = prometheus.NewDesc("callscope_verdicts_total",
		"Verdicts given on calls, by verdict: allowed, violation, unscoped, pending, would_violate (outside a staged scope, mode: audit; counted too when beside an enforced verdict). A pending call gets a second, final verdict.", []string{"verdict"}, nil)
	violationsDesc = prometheus.NewDesc("callscope_violations_total",
		"Calls outside the scope of the CallScopes binding their caller.", nil, nil)
	pendingClosedDesc = prometheus.NewDesc("callscope_pending_closed_total",
		"Pending calls closed without their TLS server name, by cause: timeout, stopped, tracking_full.", []string{"cause"}, nil)
	findingsDesc = prometheus.NewDesc("callscope_findings_total",
		"Calls carrying each finding of the catalogue (human_use, plaintext, cleartext_protocol, legacy_tls, no_sni, cross_environment), whatever their verdict.", []string{"finding"}, nil)
	pendingDesc = prometheus.NewDesc("callscope_pending_calls",
		"Calls awaiting their TLS ClientHello for a final verdict.", nil, nil)
	ruleHitsDesc = prometheus.NewDesc("callscope_rule_hits_total",
		"Calls each egress rule in force allowed, by policy and rule (as in scope.rule), staged rules included. Only the rules in force are exported, the first "+strconv.Itoa(scope.MaxRuleHitSeries)+" of them; a rule's count starts again from zero if it leaves the policies and comes back.",
		[]string{"policy", "rule"}, nil)
	ruleHitsOverflowDesc = prometheus.NewDesc("callscope_rule_hits_overflow_total",
		"Calls allowed by rules past the first "+strconv.Itoa(scope.MaxRuleHitSeries)+" in force, which get no callscope_rule_hits_total series of their own.", nil, nil)
	reloadsDesc = prometheus.NewDesc("callscope_policy_reloads_total",
		"Policy loads, by result: ok, or error (the policy in force stays).", []string{"result"}, nil)
	objectsDesc = prometheus.NewDesc("callscope_policy_objects",
		"CallScope objects of the cluster, by state: valid (in force as stored), stale (refused as stored; its last valid version is in force), invalid (refused, or named as a file's policy: it binds nothing).",
		[]string{"state"}, nil)
	objectsRejectedDesc = prometheus.NewDesc("callscope_policy_objects_rejected_total",
		"Versions of CallScope objects the agent refused, each logged with its problems.", nil, nil)
	objectsFailuresDesc = prometheus.NewDesc("callscope_policy_objects_watch_failures_total",
		"Requests to list or watch CallScope objects that failed (the API server unreachable or refusing); the objects last read stay in force.", nil, nil)
	objectsSyncedDesc = prometheus.NewDesc("callscope_policy_objects_synced",
		"1 while the CallScope objects in force are the API server's (read, and the watch up), else 0.", nil, nil)
	helloDesc = prometheus.NewDesc("callscope_tls_client_hellos_total",
		"TLS ClientHellos seen on outbound connections, by result: ok, truncated (parsed from a cut capture), unparsable (no tls event), dropped (too many handshakes in flight).",
		[]string{"result"}, nil)
	unattributedDesc = prometheus.NewDesc("callscope_tls_client_hellos_unattributed_total",
		"tls events whose connect was no longer known: they carry the socket's cgroup but no process.", nil, nil)
	serverHelloDesc = prometheus.NewDesc("callscope_tls_server_hellos_total",
		"TLS ServerHellos joined to their tls event.", nil, nil)
	dnsDesc = prometheus.NewDesc("callscope_dns_answers_total",
		"DNS answers received on the node, by result: parsed, malformed, or tcp_continuation (a TCP segment after a connection's first, not read).", []string{"result"}, nil)
	namesDesc = prometheus.NewDesc("callscope_dns_names",
		"Addresses the map of DNS answers names now.", nil, nil)
	progRunsDesc = prometheus.NewDesc("callscope_bpf_program_runs_total",
		"Runs of each kernel program, while the kernel counts them (--bpf-stats).", []string{"program"}, nil)
	progTimeDesc = prometheus.NewDesc("callscope_bpf_program_run_seconds_total",
		"Time spent in each kernel program, while the kernel counts it (--bpf-stats).", []string{"program"}, nil)
	featureDesc = prometheus.NewDesc("callscope_kernel_feature",
		"Whether the running kernel lets the agent report what a feature covers (1) or not (0, logged at start), by feature: unsent_connects, unsent_connect_errors (opt-in, --syscall-errors), dns_netns.",
		[]string{"feature"}, nil)
	calleeLookupsDesc = prometheus.NewDesc("callscope_callee_lookups_total",
		"Destination addresses looked up in the index of the cluster's Services, endpoints and pods, by result: found, unknown (not named by the index, addresses outside the cluster included), unsynced (not found before the index had listed the cluster).",
		[]string{"result"}, nil)
	calleeAddressesDesc = prometheus.NewDesc("callscope_callee_addresses",
		"Cluster IPs, pod IPs and endpoint addresses the callee index names now.", nil, nil)
	calleeWatchErrorsDesc = prometheus.NewDesc("callscope_callee_watch_errors_total",
		"Failed lists and watches of the cluster's Services, EndpointSlices and pods.", nil, nil)
	cacheDesc = prometheus.NewDesc("callscope_identity_cache_lookups_total",
		"Identity cache lookups, by what was looked up and whether the cache answered.", []string{"kind", "result"}, nil)
)

type stageCollector struct{ src Sources }

func (s *stageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lostDesc
	ch <- receivedDesc
	ch <- exitsLostDesc
	ch <- execsLostDesc
	ch <- uncheckedDesc
	ch <- unresolvedDesc
	ch <- cacheDesc
	ch <- podWaitsDesc
	ch <- calleeLookupsDesc
	ch <- calleeAddressesDesc
	ch <- calleeWatchErrorsDesc
	for _, d := range []*prometheus.Desc{verdictsDesc, violationsDesc, findingsDesc, pendingClosedDesc, pendingDesc, reloadsDesc,
		ruleHitsDesc, ruleHitsOverflowDesc,
		objectsDesc, objectsRejectedDesc, objectsFailuresDesc, objectsSyncedDesc,
		helloDesc, unattributedDesc, serverHelloDesc, dnsDesc, namesDesc, progRunsDesc, progTimeDesc, featureDesc} {
		ch <- d
	}
}

func (s *stageCollector) Collect(ch chan<- prometheus.Metric) {
	if s.src.Collector != nil {
		st := s.src.Collector()
		ch <- prometheus.MustNewConstMetric(receivedDesc, prometheus.CounterValue, float64(st.Events))
		for _, l := range st.Lost {
			ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(l.Count), l.Stage, l.Reason)
		}
		ch <- prometheus.MustNewConstMetric(exitsLostDesc, prometheus.CounterValue, float64(st.ExitsLost))
		ch <- prometheus.MustNewConstMetric(execsLostDesc, prometheus.CounterValue, float64(st.ExecsLost))
		ch <- prometheus.MustNewConstMetric(uncheckedDesc, prometheus.CounterValue, float64(st.HeldFull), "held_full")
		ch <- prometheus.MustNewConstMetric(uncheckedDesc, prometheus.CounterValue, float64(st.PlaintextLost), "ring_buffer_full")
		h := st.Hellos
		for _, c := range []struct {
			result string
			n      uint64
		}{{"ok", h.ClientHellos - h.Truncated}, {"truncated", h.Truncated}, {"unparsable", h.Unparsable}, {"dropped", h.Dropped}} {
			ch <- prometheus.MustNewConstMetric(helloDesc, prometheus.CounterValue, float64(c.n), c.result)
		}
		ch <- prometheus.MustNewConstMetric(unattributedDesc, prometheus.CounterValue, float64(h.Unattributed))
		ch <- prometheus.MustNewConstMetric(serverHelloDesc, prometheus.CounterValue, float64(h.ServerHellos))
	}
	if s.src.Scope != nil {
		st := s.src.Scope()
		for _, c := range []struct {
			verdict string
			n       uint64
		}{{"allowed", st.Allowed}, {"violation", st.Violation}, {"unscoped", st.Unscoped}, {"pending", st.Pending}, {"would_violate", st.WouldViolate}} {
			ch <- prometheus.MustNewConstMetric(verdictsDesc, prometheus.CounterValue, float64(c.n), c.verdict)
		}
		ch <- prometheus.MustNewConstMetric(violationsDesc, prometheus.CounterValue, float64(st.Violation))
		ch <- prometheus.MustNewConstMetric(pendingClosedDesc, prometheus.CounterValue, float64(st.TimedOut), "timeout")
		ch <- prometheus.MustNewConstMetric(pendingClosedDesc, prometheus.CounterValue, float64(st.Stopped), "stopped")
		ch <- prometheus.MustNewConstMetric(pendingClosedDesc, prometheus.CounterValue, float64(st.TrackingFull), "tracking_full")
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(st.PendingNow))
		for f, n := range st.Findings {
			ch <- prometheus.MustNewConstMetric(findingsDesc, prometheus.CounterValue, float64(n), scope.Catalogue[f].ID)
		}
	}
	if s.src.RuleHits != nil {
		overflow := s.src.RuleHits(func(policy, rule string, hits uint64) {
			ch <- prometheus.MustNewConstMetric(ruleHitsDesc, prometheus.CounterValue, float64(hits), policy, rule)
		})
		ch <- prometheus.MustNewConstMetric(ruleHitsOverflowDesc, prometheus.CounterValue, float64(overflow))
	}
	if s.src.Reloads != nil {
		ok, failed := s.src.Reloads()
		ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(ok), "ok")
		ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(failed), "error")
	}
	if s.src.Objects != nil {
		st := s.src.Objects()
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(st.Valid), "valid")
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(st.Stale), "stale")
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(st.Invalid), "invalid")
		ch <- prometheus.MustNewConstMetric(objectsRejectedDesc, prometheus.CounterValue, float64(st.Rejected))
		ch <- prometheus.MustNewConstMetric(objectsFailuresDesc, prometheus.CounterValue, float64(st.WatchFailures))
		synced := 0.0
		if st.Synced {
			synced = 1
		}
		ch <- prometheus.MustNewConstMetric(objectsSyncedDesc, prometheus.GaugeValue, synced)
	}
	if s.src.Programs != nil {
		for _, p := range s.src.Programs() {
			ch <- prometheus.MustNewConstMetric(progRunsDesc, prometheus.CounterValue, float64(p.Runs), p.Name)
			ch <- prometheus.MustNewConstMetric(progTimeDesc, prometheus.CounterValue, p.RunTime.Seconds(), p.Name)
		}
	}
	if s.src.Features != nil {
		for _, f := range s.src.Features() {
			v := 0.0
			if f.Available {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(featureDesc, prometheus.GaugeValue, v, f.Name)
		}
	}
	if s.src.Enrich != nil {
		st := s.src.Enrich()
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.ProcessGone), "process")
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.CgroupGone), "cgroup")
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.PodUnknown), "pod")
		ch <- prometheus.MustNewConstMetric(podWaitsDesc, prometheus.CounterValue, float64(st.PodWaits))
		ch <- prometheus.MustNewConstMetric(dnsDesc, prometheus.CounterValue, float64(st.DNS.Responses), "parsed")
		ch <- prometheus.MustNewConstMetric(dnsDesc, prometheus.CounterValue, float64(st.DNS.Malformed), "malformed")
		ch <- prometheus.MustNewConstMetric(dnsDesc, prometheus.CounterValue, float64(st.DNSTCPSkipped), "tcp_continuation")
		ch <- prometheus.MustNewConstMetric(namesDesc, prometheus.GaugeValue, float64(st.Names))
		ch <- prometheus.MustNewConstMetric(calleeLookupsDesc, prometheus.CounterValue, float64(st.CalleeFound), "found")
		ch <- prometheus.MustNewConstMetric(calleeLookupsDesc, prometheus.CounterValue, float64(st.CalleeUnknown), "unknown")
		ch <- prometheus.MustNewConstMetric(calleeLookupsDesc, prometheus.CounterValue, float64(st.CalleeUnsynced), "unsynced")
		ch <- prometheus.MustNewConstMetric(calleeAddressesDesc, prometheus.GaugeValue, float64(st.Callees.Addresses))
		ch <- prometheus.MustNewConstMetric(calleeWatchErrorsDesc, prometheus.CounterValue, float64(st.Callees.WatchErrors))
		for _, c := range []struct {
			kind, result string
			n            uint64
		}{
			{"process", "hit", st.ProcessHits}, {"process", "miss", st.ProcessMisses},
			{"cgroup", "hit", st.CgroupHits}, {"cgroup", "miss", st.CgroupMisses},
		} {
			ch <- prometheus.MustNewConstMetric(cacheDesc, prometheus.CounterValue, float64(c.n), c.kind, c.result)
		}
	}
}
