package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
)

func newLogger(cfg *runConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// runAgent runs the pipeline collector → enrich → exporter until SIGINT or
// SIGTERM, then stops capturing, writes what is in flight and returns nil.
func runAgent(cfg *runConfig, stdout, stderr io.Writer) error {
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	log = log.With("component", "agent")

	if cfg.cgroupRoot == "" {
		root, err := collector.Cgroup2Mount()
		if err != nil {
			return fmt.Errorf("%w:\n  - cgroup v2: %v", collector.ErrUnsupported, err)
		}
		cfg.cgroupRoot = root
	}
	instance, err := instanceID()
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	enr, err := enrich.New(enrich.Config{CgroupRoot: cfg.cgroupRoot, Logger: log})
	if err != nil {
		return fmt.Errorf("start enrichment: %w", err)
	}
	defer enr.Close()

	coll, err := collector.Start(collector.Config{CgroupRoot: cfg.cgroupRoot, Logger: log})
	if err != nil {
		return err
	}
	defer coll.Close()

	metrics := exporter.NewMetrics(exporter.Sources{Collector: coll.Stats, Enrich: enr.Stats})
	var pipelineDone = make(chan struct{})
	if cfg.metricsAddr != "" {
		srv, err := serveMetrics(cfg.metricsAddr, metrics, coll, pipelineDone, log)
		if err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
	}

	var sink *exporter.JSONLines
	if cfg.stdout {
		sink = exporter.NewJSONLines(stdout, exporter.NewEncoder(cfg.nodeName, instance))
	} else {
		log.Warn("no event sink is enabled: events are counted in metrics only")
	}
	log.Info("capturing outbound TCP connects", "node", cfg.nodeName, "instance", instance,
		"cgroup_root", cfg.cgroupRoot, "metrics", cfg.metricsAddr, "stdout", cfg.stdout)

	go func() {
		<-ctx.Done()
		log.Info("stopping: detaching programs and writing events in flight")
		if err := coll.Close(); err != nil {
			log.Error("stop collector", "error", err)
		}
	}()

	pipeline(coll, enr, sink, metrics, log)
	close(pipelineDone)
	if ctx.Err() == nil {
		return errors.New("the collector stopped reading events; see the log above")
	}
	log.Info("stopped", "events", coll.Stats().Events)
	return nil
}

// pipeline runs until the collector closes its batches. One goroutine owns
// enrichment and encoding, so neither needs locks.
func pipeline(coll *collector.Collector, enr *enrich.Enricher, sink *exporter.JSONLines, m *exporter.Metrics, log *slog.Logger) {
	var out []enrich.Event
	var lastErr time.Time
	for b := range coll.Batches() {
		out = growTo(out, len(b.Events))
		for i := range b.Events {
			enr.Enrich(&b.Events[i], &out[i])
		}
		coll.Release(b)
		if sink == nil {
			m.Written(out)
			continue
		}
		if err := sink.Write(out); err != nil {
			m.SinkFailed("stdout")
			if time.Since(lastErr) > time.Minute {
				log.Error("events not written", "error", err, "events", len(out))
				lastErr = time.Now()
			}
			continue
		}
		m.Written(out)
	}
}

func growTo(s []enrich.Event, n int) []enrich.Event {
	if cap(s) < n {
		return make([]enrich.Event, n)
	}
	return s[:n]
}

// serveMetrics serves /metrics, /healthz (the pipeline is running) and
// /readyz (programs attached and the ring buffer read at least once).
func serveMetrics(addr string, m *exporter.Metrics, coll *collector.Collector, pipelineDone <-chan struct{}, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-pipelineDone:
			http.Error(w, "pipeline stopped\n", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !coll.Ready() {
			http.Error(w, "not ready: programs not attached or no events read yet\n", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
	return srv, nil
}

// instanceID names this run of the agent in event ids, so that a consumer
// can tell a restart (seq starts again) from a gap.
func instanceID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("instance id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
