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
	"k8s.io/klog/v2"

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
	// client-go logs through klog: keep those lines structured too.
	klog.SetSlogLogger(log.With("component", "kubernetes"))
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

	pods, err := startPodIndex(ctx, cfg, log)
	if err != nil {
		return err
	}
	enr, err := enrich.New(enrich.Config{CgroupRoot: cfg.cgroupRoot, Pods: pods, TrustDomain: cfg.trustDomain, Logger: log})
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
		"cgroup_root", cfg.cgroupRoot, "metrics", cfg.metricsAddr, "stdout", cfg.stdout, "kubernetes", pods != nil)

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

// startPodIndex follows this node's pods when a kubeconfig is given or the
// agent runs in a pod. An API server that cannot be reached or that refuses
// the agent degrades enrichment (pods go without their metadata, counted),
// but capture goes on: the error is logged, and the informer keeps trying.
func startPodIndex(ctx context.Context, cfg *runConfig, log *slog.Logger) (*enrich.PodIndex, error) {
	client, ok, err := enrich.KubeClient(cfg.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if !ok {
		return nil, nil
	}
	pods := enrich.NewPodIndex(client, cfg.nodeName, log)
	if err := pods.Start(ctx, podSyncTimeout); err != nil {
		log.Error("kubernetes pod metadata unavailable for now; events carry pod UIDs only until it is", "error", err, "node", cfg.nodeName)
	}
	return pods, nil
}

const (
	podSyncTimeout = 30 * time.Second
	// releaseEvery lets events held back for their pod go on when no new
	// batch arrives to carry them.
	releaseEvery = 250 * time.Millisecond
)

// pipeline runs until the collector closes its batches, then lets go of any
// events still held back for their pod. One goroutine owns enrichment and
// encoding, so neither needs locks.
func pipeline(coll *collector.Collector, enr *enrich.Enricher, sink *exporter.JSONLines, m *exporter.Metrics, log *slog.Logger) {
	var out []enrich.Event
	var lastErr time.Time
	write := func(events []enrich.Event) {
		if len(events) == 0 {
			return
		}
		if sink != nil {
			if err := sink.Write(events); err != nil {
				m.SinkFailed("stdout")
				if time.Since(lastErr) > time.Minute {
					log.Error("events not written", "error", err, "events", len(events))
					lastErr = time.Now()
				}
				return
			}
		}
		m.Written(events)
	}
	tick := time.NewTicker(releaseEvery)
	defer tick.Stop()
	for {
		select {
		case b, ok := <-coll.Batches():
			if !ok {
				write(enr.Release(out[:0], time.Now(), true))
				return
			}
			out = enr.EnrichBatch(b.Events, out, time.Now())
			coll.Release(b)
			write(out)
		case now := <-tick.C:
			if enr.Waiting() > 0 {
				out = enr.Release(out[:0], now, false)
				write(out)
			}
		}
	}
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
