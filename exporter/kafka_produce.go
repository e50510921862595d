package exporter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/callscope/callscope/exporter/spool"
)

// The sink produces with kafka-go's protocol layer rather than its Writer:
// a synchronous Writer call holds partial batches for BatchTimeout, looks
// up metadata for every message, and retries inside in ways that hide why
// it failed. Here one Produce request per partition leader carries the
// whole chunk, every partition's outcome is known, and only the
// partitions that failed are sent again.

// produceState is what a batch's delivery has achieved so far.
type produceState struct {
	done [2][]bool // per topic kind, per record: acknowledged, or not to send
	// limit caps a partition's records per request once the broker
	// refused them as too large or invalid, halving until the culprit is
	// alone.
	limit map[topicPartition]int
	parts map[topicPartition][]int32 // scratch
	// abandoned says a request failed, and may, if it timed out, still
	// be reading the batch: kafka-go gives up waiting before its
	// connection gives up the request.
	abandoned bool
}

type topicPartition struct {
	kind      int
	partition int32
}

func (st *produceState) reset(b *spool.Batch, violations bool) {
	n := len(b.Records)
	st.abandoned = false
	for kind := range st.done {
		st.done[kind] = slices.Grow(st.done[kind][:0], n)[:n]
	}
	for i := range b.Records {
		st.done[kindEvents][i] = false
		v := violations && b.Records[i].Flags&spool.FlagViolation != 0
		st.done[kindViolations][i] = !v
	}
	if st.limit == nil {
		st.limit = map[topicPartition]int{}
		st.parts = map[topicPartition][]int32{}
	}
	clear(st.limit)
}

// pending says whether records are left to acknowledge.
func (st *produceState) pending() bool {
	return slices.Contains(st.done[kindEvents], false) || slices.Contains(st.done[kindViolations], false)
}

// sentPart is one partition's records in a request.
type sentPart struct {
	tp    topicPartition
	topic string
	idx   []int32
}

type leaderRequest struct {
	req   *produceAPI.Request
	parts []sentPart
	resp  *produceAPI.Response
	err   error
}

// produce sends what of b is not acknowledged yet, one request per
// partition leader, and records what the brokers acknowledged. progress
// says whether any of it was. A nil error with records left means some
// were refused and their partitions split: try again at once.
func (k *Kafka) produce(ctx context.Context, b *spool.Batch, st *produceState, retry bool) (progress bool, err error) {
	meta, err := k.metadata(ctx)
	if err != nil {
		return false, err
	}
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	leaders := map[int32]*leaderRequest{}
	for kind, name := range k.topics {
		if name == "" {
			continue
		}
		var t *metadataAPI.ResponseTopic
		for i := range meta.Topics {
			if meta.Topics[i].Name == name {
				t = &meta.Topics[i]
			}
		}
		pending := slices.Contains(st.done[kind], false)
		switch {
		case !pending:
			continue
		case t == nil:
			fail(topicError(name, kafka.UnknownTopicOrPartition))
			continue
		case t.ErrorCode != 0:
			fail(topicError(name, kafka.Error(t.ErrorCode)))
			continue
		case len(t.Partitions) == 0:
			fail(topicError(name, kafka.LeaderNotAvailable))
			continue
		}
		leaderOf := make([]int32, len(t.Partitions))
		for i := range leaderOf {
			leaderOf[i] = -1
		}
		for _, p := range t.Partitions {
			if int(p.PartitionIndex) < len(leaderOf) {
				leaderOf[p.PartitionIndex] = p.LeaderID
			}
		}
		clear(st.parts)
		for i := range b.Records {
			if st.done[kind][i] {
				continue
			}
			tp := topicPartition{kind, k.partition(b.Records[i].Key, len(leaderOf))}
			st.parts[tp] = append(st.parts[tp], int32(i))
		}
		for tp, idx := range st.parts {
			if lim, ok := st.limit[tp]; ok && len(idx) > lim {
				idx = idx[:lim]
			}
			leader := leaderOf[tp.partition]
			if leader < 0 {
				fail(topicError(name, kafka.LeaderNotAvailable))
				continue
			}
			lr := leaders[leader]
			if lr == nil {
				lr = &leaderRequest{req: &produceAPI.Request{
					Acks:    int16(kafka.RequireAll),
					Timeout: int32(kafkaProduceTimeout / time.Millisecond),
				}}
				leaders[leader] = lr
			}
			lr.add(name, tp, idx, b.Records)
			if retry {
				k.m.resent.Add(float64(len(idx)))
			}
		}
	}

	ctx, cancel := context.WithTimeout(ctx, kafkaProduceTimeout+5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, lr := range leaders {
		send := func() {
			var r protocol.Message
			r, lr.err = k.transport.RoundTrip(ctx, k.addr, lr.req)
			if lr.err == nil {
				lr.resp = r.(*produceAPI.Response)
			}
		}
		if len(leaders) == 1 {
			send()
		} else {
			wg.Go(send)
		}
	}
	wg.Wait()

	for _, lr := range leaders {
		if lr.err != nil {
			st.abandoned = true
			fail(fmt.Errorf("produce: %w", lr.err))
			continue
		}
		for _, p := range lr.parts {
			code, ok := partitionError(lr.resp, p.topic, p.tp.partition)
			if !ok {
				fail(topicError(p.topic, errors.New("no answer for a partition")))
				continue
			}
			if code == 0 {
				progress = true
				k.acknowledged(st, p)
				continue
			}
			err := kafka.Error(code)
			if !isRejected(err) {
				fail(topicError(p.topic, err))
				continue
			}
			if len(p.idx) > 1 {
				st.limit[p.tp] = (len(p.idx) + 1) / 2
				continue
			}
			// Alone and still refused: no retry can deliver it.
			k.acknowledged(st, p)
			k.m.rejected.Inc()
			if p.tp.kind == kindEvents {
				k.rejected.Add(1)
			}
			k.m.failures.WithLabelValues("rejected").Inc()
			k.log.Error("Kafka refused an event as invalid; it is lost", "topic", p.topic, "error", err,
				"bytes", len(b.Records[p.idx[0]].Value))
		}
	}
	return progress, firstErr
}

func (k *Kafka) acknowledged(st *produceState, p sentPart) {
	for _, i := range p.idx {
		st.done[p.tp.kind][i] = true
	}
	k.m.delivered[p.tp.kind].Add(float64(len(p.idx)))
}

func (lr *leaderRequest) add(topic string, tp topicPartition, idx []int32, recs []spool.Record) {
	rp := produceAPI.RequestPartition{
		Partition: tp.partition,
		RecordSet: protocol.RecordSet{
			Attributes: protocol.Attributes(kafkaCompression),
			Records:    &recordReader{recs: recs, idx: idx},
		},
	}
	lr.parts = append(lr.parts, sentPart{tp: tp, topic: topic, idx: idx})
	for i := range lr.req.Topics {
		if lr.req.Topics[i].Topic == topic {
			lr.req.Topics[i].Partitions = append(lr.req.Topics[i].Partitions, rp)
			return
		}
	}
	lr.req.Topics = append(lr.req.Topics, produceAPI.RequestTopic{Topic: topic, Partitions: []produceAPI.RequestPartition{rp}})
}

// partitionError finds a partition's error code in a produce response.
func partitionError(r *produceAPI.Response, topic string, partition int32) (int16, bool) {
	for _, t := range r.Topics {
		if t.Topic != topic {
			continue
		}
		for _, p := range t.Partitions {
			if p.Partition == partition {
				return p.ErrorCode, true
			}
		}
	}
	return 0, false
}

// partition picks the partition of a key as Kafka's Java producer does,
// so that other producers of the same keys agree.
func (k *Kafka) partition(key []byte, n int) int32 {
	if len(key) == 0 {
		k.roundRobin++
		return int32(k.roundRobin % uint32(n))
	}
	return int32((murmur2(key) & 0x7fffffff) % uint32(n))
}

// murmur2 is Kafka's key hash (org.apache.kafka.common.utils.Utils.murmur2).
func murmur2(data []byte) uint32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	n := len(data)
	h := uint32(seed) ^ uint32(n)
	for ; len(data) >= 4; data = data[4:] {
		k := uint32(data[0]) | uint32(data[1])<<8 | uint32(data[2])<<16 | uint32(data[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(data) {
	case 3:
		h ^= uint32(data[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// recordReader hands kafka-go a partition's records straight from the
// spool batch, without copying them.
type recordReader struct {
	recs       []spool.Record
	idx        []int32
	i          int
	rec        protocol.Record
	key, value bytesReadCloser
}

func (r *recordReader) ReadRecord() (*protocol.Record, error) {
	if r.i >= len(r.idx) {
		return nil, io.EOF
	}
	s := &r.recs[r.idx[r.i]]
	r.i++
	r.rec = protocol.Record{Time: time.UnixMilli(s.Time)}
	if len(s.Key) > 0 {
		r.key.Reset(s.Key)
		r.rec.Key = &r.key
	}
	r.value.Reset(s.Value)
	r.rec.Value = &r.value
	return &r.rec, nil
}

// bytesReadCloser is a bytes.Reader, whose WriteTo spares io.Copy a buffer.
type bytesReadCloser struct{ bytes.Reader }

func (*bytesReadCloser) Close() error { return nil }

func (k *Kafka) metadata(ctx context.Context) (*metadataAPI.Response, error) {
	// Served from the transport's cache, refreshed every MetadataTTL.
	r, err := k.transport.RoundTrip(ctx, k.addr, &metadataAPI.Request{TopicNames: k.topicNames})
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return r.(*metadataAPI.Response), nil
}

func topicError(topic string, err error) error {
	return fmt.Errorf("topic %s: %w", topic, err)
}

func isRejected(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) ||
		errors.Is(err, kafka.InvalidRecord) || errors.Is(err, kafka.InvalidMessage)
}

var failureReasons = []string{"unreachable", "connection", "timeout", "tls", "auth", "unauthorized", "unknown_topic", "rejected", "broker", "other"}

// kafkaFailure names why an attempt failed (a metric label) and says what
// to look at (the log).
func kafkaFailure(err error) (reason, hint string) {
	if hint, ok := tlsFailure(err); ok {
		return "tls", hint
	}
	var (
		kerr   kafka.Error
		opErr  *net.OpError
		dnsErr *net.DNSError
	)
	switch {
	case errors.Is(err, kafka.SASLAuthenticationFailed), errors.Is(err, kafka.UnsupportedSASLMechanism),
		errors.Is(err, kafka.IllegalSASLState):
		return "auth", "Kafka authentication failed: check --kafka-sasl-mechanism, --kafka-sasl-username and the password"
	case errors.Is(err, kafka.TopicAuthorizationFailed), errors.Is(err, kafka.ClusterAuthorizationFailed):
		return "unauthorized", "Kafka does not allow the agent to write the topic: grant it WRITE and DESCRIBE"
	case errors.Is(err, kafka.UnknownTopicOrPartition):
		return "unknown_topic", "Kafka topic does not exist, and the agent does not create topics: create it"
	case isRejected(err):
		return "rejected", "Kafka refused events as invalid"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, kafka.RequestTimedOut):
		return "timeout", "Kafka brokers did not answer in time"
	case errors.As(err, &dnsErr), errors.As(err, &opErr) && opErr.Op == "dial",
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable", "cannot reach the Kafka brokers"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return "connection", "lost the connection to a Kafka broker"
	case errors.As(err, &kerr):
		return "broker", "a Kafka broker refused the events for now"
	}
	return "other", "cannot deliver events to Kafka"
}
