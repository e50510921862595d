package exporter

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/exporter/spool"
)

// KafkaConfig configures the Kafka sink.
type KafkaConfig struct {
	Brokers         []string // host:port
	Topic           string   // every event
	ViolationsTopic string   // violations, in addition; empty: none
	TLS             *tls.Config
	// SASLMechanism is "plain", "scram-sha-256", "scram-sha-512" or empty.
	SASLMechanism, SASLUsername, SASLPassword string
	// SpoolDir holds the events on their way to the brokers; SpoolMaxBytes
	// bounds it (see package spool for what goes when it is full).
	SpoolDir      string
	SpoolMaxBytes int64
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Loss stages and reasons of the Kafka sink, besides StageSpool and
// ReasonSpoolFull.
const (
	StageKafka          = "kafka"
	ReasonSpoolCorrupt  = "spool_corrupt"
	ReasonKafkaRejected = "rejected"
)

const (
	// kafkaChunkBytes bounds the records produced at a time, and with
	// them each partition's record batch, uncompressed: below the 1MiB
	// brokers accept per batch by default (message.max.bytes), whatever
	// the compression achieves.
	kafkaChunkBytes = 1000 << 10
	// kafkaCompression: LZ4 costs the least CPU per byte of the codecs
	// Kafka speaks, which matters on every node the agent runs on, and
	// still shrinks the JSON events about 6 times (keys and names
	// repeat). zstd shrinks them about 11 times but compresses at half
	// the speed; gzip as well at a quarter; snappy is no faster than LZ4
	// and shrinks less.
	kafkaCompression = kafka.Lz4

	kafkaProduceTimeout = 10 * time.Second
	kafkaDialTimeout    = 10 * time.Second // TLS and SASL included
	kafkaBackoffMin     = 100 * time.Millisecond
	kafkaBackoffMax     = 5 * time.Second
	kafkaLogEvery       = time.Minute
)

// Kafka writes events to Kafka through an on-disk spool, at least once:
// Write appends to the spool, and a goroutine delivers from it in order,
// deleting only what the brokers acknowledged (acks=all). While the
// brokers are down, slow, or refuse the agent, events wait in the spool,
// within its bound, and go first once delivery resumes, after a restart
// too. Delivery retries without end; failures are logged at most once a
// minute per reason and counted in callscope_kafka_delivery_failures_total.
//
// Topics are never created: how many partitions, replicas and how long to
// keep events are the operator's choices, not something each node's agent
// should make. A missing topic is logged and its events wait.
//
// Events go to partitions by the murmur2 hash of their key, as Kafka's own
// producer does, so all of one identity's events keep their order in one
// partition. Keyless events (loss events) go round-robin.
type Kafka struct {
	topics    [2]string
	log       *slog.Logger
	spool     *spool.Spool
	transport *kafka.Transport
	addr      net.Addr
	m         kafkaMetrics
	// topicNames are the topics given, built once: every metadata request
	// carries them.
	topicNames []string

	wmu    sync.Mutex
	recs   []spool.Record // Write's, reused
	closed bool

	cancel   context.CancelFunc
	done     chan struct{}
	acked    chan struct{} // a batch was acknowledged
	failing  atomic.Bool
	rejected atomic.Uint64 // not taken yet

	// owned by the delivering goroutine
	roundRobin   uint32
	failingSince time.Time
	lastLog      map[string]time.Time
	saslWatch    *saslWatch
	// authErr is the text of the error last found to be a failed
	// authentication: kafka-go answers with the same error until it
	// connects again.
	authErr string
}

// topic kinds, indexes into Kafka.topics
const (
	kindEvents = iota
	kindViolations
)

var topicKinds = [2]string{"events", "violations"}

// NewKafka opens the spool and starts delivering from it. It fails only on
// a configuration it cannot use, or a spool it cannot open: brokers that
// cannot be reached or refuse the agent are logged, and events wait.
func NewKafka(cfg KafkaConfig) (*Kafka, error) {
	switch {
	case len(cfg.Brokers) == 0:
		return nil, errors.New("kafka: no brokers given")
	case cfg.Topic == "":
		return nil, errors.New("kafka: no topic given")
	case cfg.SpoolDir == "":
		return nil, errors.New("kafka: no spool directory given")
	case cfg.SpoolMaxBytes <= 0:
		return nil, errors.New("kafka: the spool needs a positive size bound")
	}
	var brokers []string
	for _, b := range cfg.Brokers {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, fmt.Errorf("kafka broker %q: want host:port", b)
		}
		brokers = append(brokers, b)
	}
	if len(brokers) == 0 {
		return nil, errors.New("kafka: no brokers given")
	}
	mech, err := KafkaSASL(cfg.SASLMechanism, cfg.SASLUsername, cfg.SASLPassword)
	if err != nil {
		return nil, err
	}
	var watch *saslWatch
	if mech != nil {
		watch = newSASLWatch(mech)
		mech = watch
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	sp, err := spool.Open(cfg.SpoolDir, spool.Options{
		MaxBytes: cfg.SpoolMaxBytes,
		Logger:   log.With("component", "spool"),
	})
	if err != nil {
		return nil, err
	}
	topicNames := topicList(cfg.Topic, cfg.ViolationsTopic)
	dial := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if cfg.TLS != nil {
		dial = dialTLS(dial, cfg.TLS)
	}
	k := &Kafka{
		topics: [2]string{cfg.Topic, cfg.ViolationsTopic},
		log:    log.With("component", "kafka"),
		spool:  sp,
		addr:   kafka.TCP(brokers...),
		done:   make(chan struct{}),
		acked:  make(chan struct{}, 1),
		transport: &kafka.Transport{
			Dial:        dial,
			DialTimeout: kafkaDialTimeout,
			MetadataTTL: 5 * time.Second,
			// Only ours: a cluster's full metadata can be large.
			MetadataTopics: topicNames,
			ClientID:       "callscope",
			SASL:           mech,
		},
		topicNames: topicNames,
		lastLog:    map[string]time.Time{},
		saslWatch:  watch,
	}
	if err := k.m.register(reg, sp); err != nil {
		sp.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	go k.run(ctx)
	return k, nil
}

func topicList(topics ...string) []string {
	var out []string
	for _, t := range topics {
		if t != "" {
			out = append(out, t)
		}
	}
	return out
}

// Write spools msgs. It does not wait for the brokers, only for the write
// to the spool file (the page cache); nothing of msgs is kept. The error
// is that of a spool the disk refused: those events are counted as
// dropped (TakeLosses) as well.
func (k *Kafka) Write(msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	k.wmu.Lock()
	defer k.wmu.Unlock()
	if k.closed {
		return errors.New("kafka: write after close")
	}
	now := time.Now().UnixMilli()
	recs := k.recs[:0]
	for i := range msgs {
		m := &msgs[i]
		r := spool.Record{Time: now, Key: m.Key, Value: m.Value}
		if m.Violation {
			r.Flags = spool.FlagViolation
		}
		recs = append(recs, r)
	}
	err := k.spool.Append(recs)
	clear(recs) // let go of the caller's buffers
	k.recs = recs
	return err
}

// TakeLosses appends to dst, and returns, the events lost since the last
// call: dropped because the spool bound was hit (stage "spool", reason
// "spool_full"), spool records found torn or corrupt, as a crash mid-write
// leaves them ("spool_corrupt"), and events the brokers refused as
// invalid, such as too large for the topic (stage "kafka", reason
// "rejected").
func (k *Kafka) TakeLosses(dst []collector.Loss) []collector.Loss {
	dropped, corrupt := k.spool.TakeLosses()
	if dropped > 0 {
		dst = append(dst, collector.Loss{Stage: StageSpool, Reason: ReasonSpoolFull, Count: dropped})
	}
	if corrupt > 0 {
		dst = append(dst, collector.Loss{Stage: StageSpool, Reason: ReasonSpoolCorrupt, Count: corrupt})
	}
	if n := k.rejected.Swap(0); n > 0 {
		dst = append(dst, collector.Loss{Stage: StageKafka, Reason: ReasonKafkaRejected, Count: n})
	}
	return dst
}

// Close stops delivery and closes the spool; every event is delivered or
// spooled for the next run by then. While delivery is going well, it
// first waits, until ctx is done, for the spool to empty.
func (k *Kafka) Close(ctx context.Context) error {
	k.wmu.Lock()
	if k.closed {
		k.wmu.Unlock()
		return nil
	}
	k.closed = true
	k.wmu.Unlock()

	// Polled as well as woken: failing changes without a wake-up.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
drain:
	for k.spool.Len() > 0 && !k.failing.Load() {
		select {
		case <-ctx.Done():
			break drain
		case <-k.acked:
		case <-tick.C:
		}
	}
	k.cancel()
	<-k.done
	k.transport.CloseIdleConnections()
	if n := k.spool.Len(); n > 0 {
		k.log.Info("events left in the spool for the next run", "events", n)
	}
	return k.spool.Close()
}

// run delivers the spool's batches, one at a time so that a retry can
// never overtake what follows it, until ctx is done.
func (k *Kafka) run(ctx context.Context) {
	defer close(k.done)
	k.probe(ctx)
	b := new(spool.Batch)
	st := new(produceState)
	for {
		if err := k.spool.Next(ctx, b, kafkaChunkBytes); err != nil {
			if ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return
			}
			k.logRateLimited("spool", "cannot read the spool", "error", err)
			if !sleep(ctx, time.Second) {
				return
			}
			continue
		}
		k.m.resent.Add(float64(b.Resent))
		if !k.deliver(ctx, b, st) {
			k.spool.Nack(b)
			return
		}
		k.spool.Ack(b)
		if st.abandoned {
			// A request that timed out may still be reading the batch's
			// buffer: let it have it.
			b = new(spool.Batch)
		}
		select {
		case k.acked <- struct{}{}:
		default:
		}
	}
}

// probe tells, at start, whether the brokers can be reached and the topics
// exist, rather than when the first event comes.
func (k *Kafka) probe(parent context.Context) {
	ctx, cancel := context.WithTimeout(parent, 15*time.Second)
	defer cancel()
	meta, err := k.metadata(ctx)
	if err == nil {
		for _, t := range meta.Topics {
			if t.ErrorCode != 0 {
				err = topicError(t.Name, kafka.Error(t.ErrorCode))
				break
			}
		}
	}
	if err != nil {
		if parent.Err() == nil {
			k.failed(err)
		}
		return
	}
	k.log.Info("connected to Kafka", "brokers", k.addr.String(), "topics", strings.Join(k.topicNames, ","), "spooled", k.spool.Len())
}

// deliver produces b until the brokers acknowledged all of it, retrying
// with backoff; false when ctx ended first. Either way, st.abandoned says
// whether b's buffer may still be read by a request left behind.
func (k *Kafka) deliver(ctx context.Context, b *spool.Batch, st *produceState) bool {
	st.reset(b, k.topics[kindViolations] != "")
	for attempt := 0; ; attempt++ {
		progress, err := k.produce(ctx, b, st, attempt > 0)
		if err == nil && !st.pending() {
			k.recovered()
			return true
		}
		if err == nil {
			// Some events were refused and their partition's batch is
			// split to find them: go on at once.
			attempt = -1
			continue
		}
		if ctx.Err() != nil {
			return false
		}
		k.failed(err)
		if progress {
			attempt = 0
		}
		if !sleep(ctx, backoff(attempt)) {
			return false
		}
	}
}

func backoff(attempt int) time.Duration {
	d := kafkaBackoffMin << min(attempt, 10)
	d = min(d, kafkaBackoffMax)
	// ±20%, so that the agents of a cluster do not retry in step.
	return d*4/5 + rand.N(d*2/5+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// failed counts and logs a failed attempt, at most once a minute per reason.
func (k *Kafka) failed(err error) {
	reason, hint := kafkaFailure(err)
	if reason == "connection" && k.saslWatch != nil &&
		(k.saslWatch.hungUp(kafkaDialTimeout) || err.Error() == k.authErr) {
		reason, hint = "auth", "Kafka authentication failed: the broker hung up on the agent's credentials; check --kafka-sasl-mechanism, --kafka-sasl-username and the password"
	}
	if reason == "auth" {
		k.authErr = err.Error()
	}
	k.m.failures.WithLabelValues(reason).Inc()
	if !k.failing.Swap(true) {
		k.failingSince = time.Now()
	}
	k.logRateLimited(reason, hint, "reason", reason, "error", err, "spooled", k.spool.Len(),
		"brokers", k.addr.String())
}

func (k *Kafka) recovered() {
	k.m.lastDelivery.SetToCurrentTime()
	if k.failing.Swap(false) {
		k.log.Info("Kafka delivery resumed", "after", time.Since(k.failingSince).Round(time.Millisecond),
			"spooled", k.spool.Len())
		clear(k.lastLog)
		k.authErr = ""
	}
}

func (k *Kafka) logRateLimited(key, msg string, args ...any) {
	now := time.Now()
	if last, ok := k.lastLog[key]; ok && now.Sub(last) < kafkaLogEvery {
		return
	}
	k.lastLog[key] = now
	k.log.Error(msg, args...)
}

// kafkaMetrics are the sink's metrics. Label values come from fixed sets.
type kafkaMetrics struct {
	delivered    [2]prometheus.Counter
	failures     *prometheus.CounterVec
	resent       prometheus.Counter
	rejected     prometheus.Counter
	lastDelivery prometheus.Gauge
}

func (m *kafkaMetrics) register(reg prometheus.Registerer, sp *spool.Spool) error {
	delivered := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callscope_kafka_messages_delivered_total",
		Help: "Messages the Kafka brokers acknowledged, by topic: events (every event) or violations.",
	}, []string{"topic"})
	for i, kind := range topicKinds {
		m.delivered[i] = delivered.WithLabelValues(kind)
	}
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callscope_kafka_delivery_failures_total",
		Help: "Attempts to deliver events to Kafka that failed, by reason: unreachable, connection, timeout, tls, auth, unauthorized, unknown_topic, rejected, broker or other. Events wait in the spool meanwhile.",
	}, []string{"reason"})
	for _, r := range failureReasons {
		m.failures.WithLabelValues(r)
	}
	m.resent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callscope_kafka_messages_resent_total",
		Help: "Messages sent to Kafka again, after an attempt that failed or from a previous run's spool: each may be a duplicate.",
	})
	m.rejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callscope_kafka_messages_rejected_total",
		Help: "Messages the Kafka brokers refused as invalid (too large for the topic, say): they are lost.",
	})
	m.lastDelivery = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "callscope_kafka_last_delivery_timestamp_seconds",
		Help: "When the Kafka brokers last acknowledged events (Unix time).",
	})
	cs := []prometheus.Collector{
		delivered, m.failures, m.resent, m.rejected, m.lastDelivery, spoolCollector{sp},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("kafka metrics: %w", err)
		}
	}
	return nil
}

var (
	spoolBytesDesc = prometheus.NewDesc("callscope_spool_bytes",
		"Bytes of the spool files: events waiting for Kafka.", nil, nil)
	spoolEventsDesc = prometheus.NewDesc("callscope_spool_events",
		"Events in the spool not acknowledged by Kafka yet.", nil, nil)
	spoolDroppedDesc = prometheus.NewDesc("callscope_spool_dropped_events_total",
		"Events dropped from the spool, by reason: spool_full (its bound was hit: the oldest went) or spool_corrupt (a record torn by a crash, or corrupt on disk).",
		[]string{"reason"}, nil)
)

// spoolCollector reads the spool's counters once a scrape, under one lock
// take, rather than once per metric.
type spoolCollector struct{ sp *spool.Spool }

func (spoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- spoolBytesDesc
	ch <- spoolEventsDesc
	ch <- spoolDroppedDesc
}

func (c spoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.sp.Stats()
	ch <- prometheus.MustNewConstMetric(spoolBytesDesc, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(spoolEventsDesc, prometheus.GaugeValue, float64(s.Records))
	ch <- prometheus.MustNewConstMetric(spoolDroppedDesc, prometheus.CounterValue, float64(s.Dropped), ReasonSpoolFull)
	ch <- prometheus.MustNewConstMetric(spoolDroppedDesc, prometheus.CounterValue, float64(s.Corrupt), ReasonSpoolCorrupt)
}
