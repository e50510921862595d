package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/scope"
)

// BenchmarkPipeline measures the user-space cost per event after decoding:
// enrichment on a cache hit, a verdict against 1,000 CallScopes and JSON
// encoding, in batches of 256 as the agent does. Decoding is measured by
// collector's BenchmarkDecode.
func BenchmarkPipeline(b *testing.B) {
	root, err := collector.Cgroup2Mount()
	if err != nil {
		b.Skip(err)
	}
	enr, err := enrich.New(enrich.Config{CgroupRoot: root, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Skip(err)
	}
	defer enr.Close()
	stat, _ := os.ReadFile("/proc/self/stat")
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ticks, _ := strconv.ParseUint(fields[19], 10, 64)

	batch := make([]collector.Event, 256)
	for i := range batch {
		batch[i] = collector.Event{
			Kind: collector.KindConnect, Outcome: collector.OutcomeEstablished, Cookie: uint64(i + 1),
			Src: netip.MustParseAddrPort("10.0.3.7:43210"), Dst: netip.MustParseAddrPort("10.96.0.15:443"),
			PID: uint32(os.Getpid()), TID: uint32(os.Getpid()), ProcStart: ticks * 1e7, CgroupID: 1,
		}
		copy(batch[i].Comm[:], "billing")
	}
	exe, _ := os.Executable()
	var policies strings.Builder
	for i := range 999 {
		fmt.Fprintf(&policies, "---\napiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: team-%d}\nspec:\n  subject: {namespace: ns-%d}\n  egress: [{to: [{cidr: 10.%d.0.0/16}], ports: [443]}]\n", i, i, i%256)
	}
	fmt.Fprintf(&policies, "---\napiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: bench}\nspec:\n  subject: {exe: %q}\n  egress: [{to: [{cidr: 10.96.0.0/12}], ports: [443]}]\n", exe)
	parsed, err := scope.Parse("bench.yaml", []byte(policies.String()))
	if err != nil {
		b.Fatal(err)
	}
	stage := scope.NewStage(scope.StageConfig{Policies: scope.NewPolicies(scope.Compile(parsed))})
	stream := exporter.NewStream(exporter.NewEncoder("worker-1", "0123456789abcdef"), io.Discard, nil, nil)
	var (
		enriched []enrich.Event
		judged   []scope.Event
	)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		enriched = enr.EnrichBatch(batch, enriched, now)
		judged = stage.JudgeBatch(enriched, judged[:0], now)
		if err := stream.Write(judged); err != nil {
			b.Fatal(err)
		}
	}
	if judged[0].Scope.Verdict != scope.Allowed {
		b.Fatalf("verdict %v, want allowed: the benchmark would not judge as the agent does", judged[0].Scope.Verdict)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "events/s")
}
