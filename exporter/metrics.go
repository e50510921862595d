package exporter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

// Metrics holds the agent's Prometheus metrics. Counts kept by other stages
// are read from their Stats when scraped, so the event path pays nothing
// for them. Label values come from fixed sets: never an address, port,
// name, pid or container id.
type Metrics struct {
	Registry *prometheus.Registry

	connects     prometheus.Counter
	losses       prometheus.Counter
	sinkFailures *prometheus.CounterVec
}

// Sources are the stages whose counters the metrics expose.
type Sources struct {
	Collector func() collector.Stats
	Enrich    func() enrich.Stats
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
		connects: events.WithLabelValues(collector.KindConnect.String()),
		losses:   events.WithLabelValues(collector.KindLoss.String()),
		sinkFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callscope_sink_write_failures_total",
			Help: "Batches of events a sink failed to write, by sink.",
		}, []string{"sink"}),
	}
	reg.MustRegister(events, m.sinkFailures,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stageCollector{src: src})
	return m
}

// Written counts events that reached the stream.
func (m *Metrics) Written(events []enrich.Event) {
	losses := 0
	for i := range events {
		if events[i].Kind == collector.KindLoss {
			losses++
		}
	}
	// Two atomic adds per batch rather than one per event.
	m.connects.Add(float64(len(events) - losses))
	if losses > 0 {
		m.losses.Add(float64(losses))
	}
}

// SinkFailed counts a batch a sink could not write.
func (m *Metrics) SinkFailed(sink string) { m.sinkFailures.WithLabelValues(sink).Inc() }

var (
	lostDesc = prometheus.NewDesc("callscope_events_lost_total",
		"Events lost before they reached the stream, by stage and reason.", []string{"stage", "reason"}, nil)
	exitsLostDesc = prometheus.NewDesc("callscope_process_exits_lost_total",
		"Process exits the kernel could not report (ring buffer full): no event is lost, the process's cache entry ages out instead.", nil, nil)
	receivedDesc = prometheus.NewDesc("callscope_kernel_events_total",
		"Events read from the kernel ring buffer and handed to the pipeline.", nil, nil)
	unresolvedDesc = prometheus.NewDesc("callscope_identity_unresolved_total",
		"Identity lookups that found nothing, by what was looked up: the process (gone before /proc was read), the cgroup (removed before its path was resolved) or the pod (not known to the Kubernetes API in time).",
		[]string{"kind"}, nil)
	podWaitsDesc = prometheus.NewDesc("callscope_identity_pod_waits_total",
		"Events held back because their pod was not known to the Kubernetes API yet.", nil, nil)
	cacheDesc = prometheus.NewDesc("callscope_identity_cache_lookups_total",
		"Identity cache lookups, by what was looked up and whether the cache answered.", []string{"kind", "result"}, nil)
)

type stageCollector struct{ src Sources }

func (s *stageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lostDesc
	ch <- receivedDesc
	ch <- exitsLostDesc
	ch <- unresolvedDesc
	ch <- cacheDesc
	ch <- podWaitsDesc
}

func (s *stageCollector) Collect(ch chan<- prometheus.Metric) {
	if s.src.Collector != nil {
		st := s.src.Collector()
		ch <- prometheus.MustNewConstMetric(receivedDesc, prometheus.CounterValue, float64(st.Events))
		for _, l := range st.Lost {
			ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(l.Count), l.Stage, l.Reason)
		}
		ch <- prometheus.MustNewConstMetric(exitsLostDesc, prometheus.CounterValue, float64(st.ExitsLost))
	}
	if s.src.Enrich != nil {
		st := s.src.Enrich()
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.ProcessGone), "process")
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.CgroupGone), "cgroup")
		ch <- prometheus.MustNewConstMetric(unresolvedDesc, prometheus.CounterValue, float64(st.PodUnknown), "pod")
		ch <- prometheus.MustNewConstMetric(podWaitsDesc, prometheus.CounterValue, float64(st.PodWaits))
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
