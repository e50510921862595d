// Reading the events topic back.

package main

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// consumer reads the events topic: events by id, and losses by stage and
// reason.
type consumer struct {
	mu   sync.Mutex
	ids  map[string]string // id → kind
	dups uint64
	lost map[string]uint64
	read uint64
}

func newConsumer() *consumer {
	return &consumer{ids: map[string]string{}, lost: map[string]uint64{}}
}

type streamEvent struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Loss *struct {
		Stage  string `json:"stage"`
		Reason string `json:"reason"`
		Count  uint64 `json:"count"`
	} `json:"loss"`
}

func (c *consumer) add(r *kgo.Record) {
	var e streamEvent
	if err := json.Unmarshal(r.Value, &e); err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read++
	if _, ok := c.ids[e.ID]; ok {
		c.dups++
		return
	}
	c.ids[e.ID] = e.Kind
	if e.Kind == "loss" && e.Loss != nil {
		c.lost[e.Loss.Stage+"/"+e.Loss.Reason] += e.Loss.Count
	}
}

// got is what was read back.
type got struct {
	connects, hellos, other uint64
	lost                    map[string]uint64
	dups, read              uint64
}

// readBack reads the events topic from its start until it has been idle
// for a few seconds.
func readBack(ctx context.Context, broker string) (got, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(eventsTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		return got{}, err
	}
	defer cl.Close()
	fresh := newConsumer()
	idle := 0
	for idle < 4 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { n++; fresh.add(r) })
		if n == 0 {
			idle++
		} else {
			idle = 0
		}
		if ctx.Err() != nil {
			return got{}, ctx.Err()
		}
	}
	var g got
	g.lost, g.dups, g.read = fresh.lost, fresh.dups, fresh.read
	for _, k := range fresh.ids {
		switch k {
		case "connect":
			g.connects++
		case "tls":
			g.hellos++
		case "loss":
		default:
			g.other++
		}
	}
	return g, nil
}
