// How tail finds the events of an agent that never reached Kafka.

package main

import "time"

// seqTracker finds the seqs of each agent instance that never came. Events
// of one instance are spread over partitions, which Kafka does not order
// among themselves: a seq ahead of the next expected waits grace for those
// before it before they are reported missing. Duplicates (delivery is at
// least once) and events older than the first seen are ignored.
type seqTracker struct {
	grace     time.Duration
	report    func(gap)
	instances map[string]*instanceSeqs
}

type gap struct {
	instance string
	from, to uint64 // inclusive
}

type instanceSeqs struct {
	next  uint64               // lowest seq not seen yet
	ahead map[uint64]time.Time // seen, above next, and when
	since time.Time            // when the oldest of ahead came
}

// maxAhead bounds the seqs held per instance while a gap waits.
const maxAhead = 1 << 16

func newSeqTracker(grace time.Duration, report func(gap)) *seqTracker {
	return &seqTracker{grace: grace, report: report, instances: map[string]*instanceSeqs{}}
}

func (t *seqTracker) see(instance string, seq uint64, now time.Time) {
	in := t.instances[instance]
	if in == nil {
		t.instances[instance] = &instanceSeqs{next: seq + 1, ahead: map[uint64]time.Time{}}
		return
	}
	switch {
	case seq < in.next:
		return
	case seq == in.next:
		in.next++
		in.advance()
	default:
		if len(in.ahead) == 0 {
			in.since = now
		}
		if _, dup := in.ahead[seq]; !dup {
			in.ahead[seq] = now
		}
	}
	t.skip(instance, in, now)
}

// flush reports the gaps that waited long enough.
func (t *seqTracker) flush(now time.Time) {
	for instance, in := range t.instances {
		t.skip(instance, in, now)
	}
}

// skip reports the gaps before the seqs seen ahead that waited long
// enough, and moves on past them.
func (t *seqTracker) skip(instance string, in *instanceSeqs, now time.Time) {
	for len(in.ahead) > 0 && (now.Sub(in.since) >= t.grace || len(in.ahead) > maxAhead) {
		low := uint64(0)
		for s := range in.ahead {
			if low == 0 || s < low {
				low = s
			}
		}
		t.report(gap{instance: instance, from: in.next, to: low - 1})
		in.next = low
		in.advance()
		in.since = now
		for _, at := range in.ahead {
			if at.Before(in.since) {
				in.since = at
			}
		}
	}
}

// advance moves next past the seqs already seen ahead.
func (in *instanceSeqs) advance() {
	for {
		if _, ok := in.ahead[in.next]; !ok {
			return
		}
		delete(in.ahead, in.next)
		in.next++
	}
}
