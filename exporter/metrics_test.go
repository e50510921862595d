package exporter

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

func TestMetricsWritten(t *testing.T) {
	m := NewMetrics(Sources{})
	evs := make([]enrich.Event, 4)
	for i := range evs {
		evs[i].Kind = collector.KindConnect
	}
	evs[2].Kind = collector.KindLoss
	m.Written(evs)
	m.Written(evs[:1])
	if c, l := testutil.ToFloat64(m.connects), testutil.ToFloat64(m.losses); c != 4 || l != 1 {
		t.Errorf("connect %v loss %v, want 4 and 1", c, l)
	}
}
