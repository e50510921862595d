package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/metricsserver"
	"github.com/callscope/callscope/scope"
)

func newLogger(cfg *runConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(&safeLogWriter{w: w, json: true}, opts)), nil
	}
	return slog.New(slog.NewTextHandler(&safeLogWriter{w: w}, opts)), nil
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

	kube, kubeOn, err := enrich.KubeClient(cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	var policies *scope.Policies
	if len(cfg.policies) > 0 {
		policies, err = scope.Watch(ctx, cfg.policies, log)
		if err != nil {
			return fmt.Errorf("load policies: %w", err)
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					// Watch logs and counts the result.
					policies.Reload()
				}
			}
		}()
	}
	var objects *scope.Objects
	kubeStart := time.Now()
	if kubeOn {
		if policies == nil {
			policies = scope.WithoutFiles(log)
		}
		if objects, err = watchObjects(ctx, cfg.kubeconfig, policies); err != nil {
			return err
		}
	}
	findings := scope.FindingsConfig{CleartextPorts: cfg.cleartextPorts.ports}
	if kubeOn && cfg.envLabel != "" {
		envs := enrich.NewEnvironments(kube, cfg.envLabel, log)
		go func() {
			// The namespaces' labels only add a finding: the start does
			// not wait for them.
			if err := envs.Start(ctx, podSyncTimeout); err != nil && ctx.Err() == nil {
				log.Error("namespace labels not read yet; calls carry no cross_environment finding until they are", "component", "enrich", "err", err)
			}
		}()
		findings.Environment = envs.Of
	}
	stage := scope.NewStage(scope.StageConfig{Policies: policies, PendingTimeout: cfg.pendingTimeout, Findings: findings, Logger: log})

	switch {
	case cfg.metricsAuth == "" && kubeOn:
		// Where there is an API server to ask, scrapes must show it a token.
		cfg.metricsAuth = metricsserver.AuthKubernetes
	case cfg.metricsAuth == "":
		cfg.metricsAuth = metricsserver.AuthNone
	case cfg.metricsAuth == metricsserver.AuthKubernetes && !kubeOn && cfg.metricsAddr != "":
		return errors.New("--metrics-auth=kubernetes needs a Kubernetes API server to review scrapers' tokens: give --kubeconfig, or run in a pod")
	}
	var pods *enrich.PodIndex
	var callees *enrich.CalleeIndex
	if kubeOn {
		pods = startPodIndex(ctx, kube, cfg.nodeName, log)
		// Read while the pods were: usually both are in before the first
		// call is judged, and an API server that does not answer holds
		// the start up once.
		if !objects.WaitSynced(ctx, objectSyncTimeout-time.Since(kubeStart)) {
			log.Error("CallScope objects not read yet; until they are, calls are judged by the --policy files alone",
				"policy_files", len(cfg.policies))
		}
		// Within the same window: the three lists are read in parallel by
		// the API server, and the start waits for them once.
		callees = startCalleeIndex(ctx, kube, cfg.trustDomain, max(calleeSyncTimeout-time.Since(kubeStart), time.Second), log)
	}
	enr, err := enrich.New(enrich.Config{CgroupRoot: cfg.cgroupRoot, Pods: pods, Callees: callees, TrustDomain: cfg.trustDomain, Logger: log})
	if err != nil {
		return fmt.Errorf("start enrichment: %w", err)
	}
	defer enr.Close()

	coll, err := collector.Start(collector.Config{CgroupRoot: cfg.cgroupRoot, BPFStats: cfg.bpfStats, SyscallErrors: cfg.syscallErrors,
		TLSPorts: cfg.tlsPorts.ports, Logger: log})
	if err != nil {
		return err
	}
	defer coll.Close()

	src := exporter.Sources{Collector: coll.Stats, Enrich: enr.Stats, Scope: stage.Stats, Programs: coll.Programs, Features: coll.Features}
	if len(cfg.policies) > 0 {
		src.Reloads = policies.Reloads
	}
	if policies != nil {
		src.RuleHits = policies.RuleHits
	}
	if objects != nil {
		src.Objects = objects.Stats
	}
	metrics := exporter.NewMetrics(src)

	kafka, err := startKafka(cfg, metrics, log)
	if err != nil {
		return err
	}
	var pipelineDone = make(chan struct{})
	if cfg.metricsAddr != "" {
		srv, err := serveMetrics(ctx, cfg, kube, metrics, coll, pipelineDone, log)
		if err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
	}

	var out io.Writer
	if cfg.stdout {
		out = stdout
	}
	var msgs exporter.MessageSink
	if kafka != nil {
		msgs = kafka
	}
	if out == nil && msgs == nil {
		log.Warn("no event sink is enabled: events are counted in metrics only")
	}
	stream := exporter.NewStream(newRecordEncoder(cfg, instance), out, msgs, metrics)
	log.Info("capturing outbound TCP connects, TLS hellos and DNS answers", "node", cfg.nodeName, "instance", instance,
		"cgroup_root", cfg.cgroupRoot, "format", cfg.format, "metrics", cfg.metricsAddr, "metrics_auth", cfg.metricsAuth, "stdout", cfg.stdout, "kafka", kafka != nil,
		"kubernetes", pods != nil, "policy_files", len(cfg.policies), "policy_objects", objects != nil)

	go func() {
		<-ctx.Done()
		log.Info("stopping: detaching programs and writing events in flight")
		if err := coll.Close(); err != nil {
			log.Error("stop collector", "error", err)
		}
	}()

	pipeline(coll, enr, stage, stream, log)
	close(pipelineDone)
	if kafka != nil {
		// Deliver what is in flight, or leave it in the spool for the next run.
		cctx, cancel := context.WithTimeout(context.Background(), kafkaCloseTimeout)
		if err := kafka.Close(cctx); err != nil {
			log.Error("stop kafka", "error", err)
		}
		cancel()
	}
	if ctx.Err() == nil {
		return errors.New("the collector stopped reading events; see the log above")
	}
	log.Info("stopped", "events", coll.Stats().Events)
	return nil
}

// newRecordEncoder is the encoder of --format.
func newRecordEncoder(cfg *runConfig, instance string) exporter.RecordEncoder {
	if cfg.format == exporter.FormatOCSF {
		return exporter.NewOCSFEncoder(cfg.nodeName, instance, buildVersion())
	}
	return exporter.NewEncoder(cfg.nodeName, instance)
}

// startPodIndex follows this node's pods. An API server that cannot be
// reached or that refuses the agent degrades enrichment (pods go without
// their metadata, counted), but capture goes on: the error is logged, and
// the informer keeps trying.
func startPodIndex(ctx context.Context, client kubernetes.Interface, nodeName string, log *slog.Logger) *enrich.PodIndex {
	pods := enrich.NewPodIndex(client, nodeName, log)
	if err := pods.Start(ctx, podSyncTimeout); err != nil {
		log.Error("kubernetes pod metadata unavailable for now; events carry pod UIDs only until it is", "error", err, "node", nodeName)
	}
	return pods
}

// watchObjects keeps the cluster's CallScope objects in force with the
// policy files. The API server is asked as enrich.KubeClient asks it, with
// a dynamic client: CallScope objects are not served as protobuf.
func watchObjects(ctx context.Context, kubeconfig string, policies *scope.Policies) (*scope.Objects, error) {
	cfg, err := kubeRESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for CallScope objects: %w", err)
	}
	return policies.WatchObjects(ctx, dyn)
}

// kubeRESTConfig is the configuration enrich.KubeClient builds, for a
// Kubernetes it found on: from the kubeconfig given, else in-cluster.
func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for CallScope objects: %w", err)
	}
	cfg.UserAgent = "callscope"
	return cfg, nil
}

const (
	// objectSyncTimeout bounds the wait for the CallScope objects at
	// start, counted from when they began to be read, with the pods'.
	objectSyncTimeout = 30 * time.Second
	podSyncTimeout    = 30 * time.Second
	kafkaCloseTimeout = 10 * time.Second
	// releaseEvery lets events held back for their pod go on when no new
	// batch arrives to carry them.
	releaseEvery = 250 * time.Millisecond
)

// pipeline runs until the collector closes its batches, then lets go of any
// events still held back for their pod and closes pending verdicts. One
// goroutine owns enrichment, verdicts and encoding, so none needs locks.
func pipeline(coll *collector.Collector, enr *enrich.Enricher, stage *scope.Stage, stream *exporter.Stream, log *slog.Logger) {
	var (
		enriched []enrich.Event
		judged   []scope.Event
		lastErr  time.Time
	)
	write := func(events []scope.Event) {
		if err := stream.Write(events); err != nil && time.Since(lastErr) > time.Minute {
			log.Error("events not written", "error", err, "events", len(events))
			lastErr = time.Now()
		}
	}
	tick := time.NewTicker(releaseEvery)
	defer tick.Stop()
	for {
		select {
		case b, ok := <-coll.Batches():
			now := time.Now()
			if !ok {
				enriched = enr.Release(enriched[:0], now, true)
				judged = stage.JudgeBatch(enriched, judged[:0], now)
				write(stage.Expire(judged, now, true))
				return
			}
			enriched = enr.EnrichBatch(b.Events, enriched, now)
			coll.Release(b)
			judged = stage.JudgeBatch(enriched, judged[:0], now)
			write(judged)
		case now := <-tick.C:
			enriched = enriched[:0]
			if enr.Waiting() > 0 {
				enriched = enr.Release(enriched, now, false)
			}
			judged = stage.JudgeBatch(enriched, judged[:0], now)
			judged = stage.Expire(judged, now, false)
			write(judged)
		}
	}
}

// serveMetrics serves /metrics (behind --metrics-auth), /healthz (the
// pipeline is running) and /readyz (programs attached and the ring buffer
// read at least once); the probes stay open for the kubelet.
func serveMetrics(ctx context.Context, cfg *runConfig, kube kubernetes.Interface, m *exporter.Metrics, coll *collector.Collector, pipelineDone <-chan struct{}, log *slog.Logger) (*metricsserver.Server, error) {
	healthz := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-pipelineDone:
			http.Error(w, "pipeline stopped\n", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	readyz := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !coll.Ready() {
			http.Error(w, "not ready: programs not attached or no events read yet\n", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return metricsserver.Start(ctx, metricsserver.Config{
		Addr:      cfg.metricsAddr,
		Auth:      cfg.metricsAuth,
		Kube:      kube,
		CertFile:  cfg.metricsCert,
		KeyFile:   cfg.metricsKey,
		Protected: map[string]http.Handler{"/metrics": promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})},
		Open:      map[string]http.Handler{"/healthz": healthz, "/readyz": readyz},
		Logger:    log.With("component", "metrics"),
	})
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
