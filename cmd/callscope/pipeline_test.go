package main

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
)

// BenchmarkPipeline measures the user-space cost per event after decoding:
// enrichment on a cache hit and JSON encoding, written in batches of 256 as
// the agent does. Decoding is measured by collector's BenchmarkDecode.
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
	sink := exporter.NewJSONLines(io.Discard, exporter.NewEncoder("worker-1", "0123456789abcdef"))
	out := make([]enrich.Event, len(batch))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for i := range batch {
			enr.Enrich(&batch[i], &out[i])
		}
		if err := sink.Write(out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "events/s")
}
