// How tail reads Kafka: every partition of one topic, merged.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/callscope/callscope/internal/termsafe"
)

// lookupPartitions asks the brokers in turn for the topic's partitions.
func lookupPartitions(ctx context.Context, d *kafka.Dialer, brokers []string, topic string) ([]kafka.Partition, error) {
	var errs []error
	for _, b := range brokers {
		ps, err := d.LookupPartitions(ctx, "tcp", b, topic)
		if err == nil && len(ps) > 0 {
			slices.SortFunc(ps, func(a, b kafka.Partition) int { return a.ID - b.ID })
			return ps, nil
		}
		if err == nil {
			err = errors.New("no partitions")
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		if errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.SASLAuthenticationFailed) {
			break // every broker would say the same
		}
	}
	return nil, fmt.Errorf("topic %s: %w", topic, errors.Join(errs...))
}

// readPartitions starts one reader per partition of topic, at its newest
// offset or, with fromBeginning, its oldest, and merges their messages
// into one channel, closed once every reader has stopped. The readers run
// until ctx is done or closeReaders is called; closeReaders must be
// called in any case.
func readPartitions(ctx context.Context, dialer *kafka.Dialer, brokers []string, topic string, partitions []kafka.Partition,
	fromBeginning bool, stderr io.Writer) (msgs <-chan kafka.Message, closeReaders func(), err error) {
	out := make(chan kafka.Message, 256)
	var wg sync.WaitGroup
	readers := make([]*kafka.Reader, 0, len(partitions))
	closeReaders = func() {
		for _, r := range readers {
			r.Close()
		}
	}
	for _, p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:   brokers,
			Topic:     topic,
			Partition: p.ID,
			Dialer:    dialer,
			MaxWait:   500 * time.Millisecond,
			ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
				// Broker errors can quote what the broker was sent.
				fmt.Fprintf(stderr, "kafka: %s\n", termsafe.Line(fmt.Sprintf(msg, args...)))
			}),
		})
		offset := kafka.LastOffset
		if fromBeginning {
			offset = kafka.FirstOffset
		}
		if err := r.SetOffset(offset); err != nil {
			r.Close()
			closeReaders()
			return nil, nil, fmt.Errorf("partition %d: %w", p.ID, err)
		}
		readers = append(readers, r)
		wg.Go(func() {
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return // ctx is done, or the reader was closed
				}
				select {
				case out <- m:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, closeReaders, nil
}
