package exporter

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callscope/callscope/collector"
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
