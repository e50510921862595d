// The start/outcome join: connects awaiting their outcome, and those
// awaiting their first data.

package collector

import (
	"time"

	"github.com/callscope/callscope/internal/cookieindex"
)

const sweepEvery = 30 * time.Second

// inflight holds connects awaiting their outcome: an index by cookie into
// slots that are reused, last freed first. The index's entries stay small
// (a cookie and a slot number), so that looking one up touches little
// memory however many connects wait, and nothing is allocated once the
// slots have grown to the most that waited at once.
type inflight struct {
	index cookieindex.Index
	slots []started
	free  []int32
}

func (f *inflight) len() int { return f.index.Len() }

// put keeps st for cookie, in place of what an earlier connect of the same
// socket left; it reports false when cookie is new and max are held.
func (f *inflight) put(cookie uint64, st *started, max int) bool {
	if f.index.Len() >= max {
		i, ok := f.index.Get(cookie)
		if ok {
			f.slots[i] = *st
		}
		return ok
	}
	v, found := f.index.Upsert(cookie)
	if !found {
		if n := len(f.free); n > 0 {
			*v, f.free = f.free[n-1], f.free[:n-1]
		} else {
			*v = int32(len(f.slots))
			f.slots = append(f.slots, started{})
		}
	}
	f.slots[*v] = *st
	return true
}

// take removes and returns what was kept for cookie.
func (f *inflight) take(cookie uint64) (started, bool) {
	i, ok := f.index.Delete(cookie)
	if !ok {
		return started{}, false
	}
	f.free = append(f.free, i)
	return f.slots[i], true
}

// start keeps a connect's start record until its outcome comes.
func (c *Collector) start(b []byte, bootOffset int64) {
	cookie, st, err := decodeStart(b, bootOffset)
	if err != nil {
		c.malformed(err)
		return
	}
	if !c.inflight.put(cookie, &st, c.cfg.MaxInFlight) {
		c.lose(lossConnFull, 1)
	}
}

// outcome completes the connect an outcome record belongs to and hands it
// on. An outcome without its start is of a connect that began before the
// programs were attached, or whose start was lost and counted: it is
// dropped.
func (c *Collector) outcome(b []byte, bootOffset int64) {
	o, err := decodeOutcome(b)
	if err != nil {
		c.malformed(err)
		return
	}
	st, ok := c.inflight.take(o.cookie)
	if !ok {
		return
	}
	ev := Event{
		Kind: KindConnect, Outcome: o.outcome, Errno: o.errno,
		Time: o.ts + bootOffset, Cookie: o.cookie, Src: st.src, Dst: st.dst,
	}
	st.caller.applyTo(&ev)
	if o.outcome == OutcomeEstablished {
		c.hellos.connected(o.cookie, &st.caller)
		if c.tlsPorts.has(st.dst.Port()) {
			if c.held.hold(&ev, time.Now().Add(firstDataWait)) {
				return
			}
			c.heldFull.Add(1)
		}
	}
	c.push(&ev)
}

// firstData hands on the connect held for cookie, now that its first data
// came: a ClientHello, or, with plaintext, anything else.
func (c *Collector) firstData(cookie uint64, plaintext bool) {
	ev, ok := c.held.take(cookie)
	if !ok {
		return
	}
	ev.Plaintext = plaintext
	c.push(ev)
}

// sweep forgets connects whose outcome can no longer come: a socket that
// some other program kept from reaching ESTABLISHED or CLOSE in our sight,
// or whose outcome record the ring buffer had no room for (counted then).
func (c *Collector) sweep() {
	cutoff := time.Now().Add(-c.cfg.ConnExpiry).UnixNano()
	// The index cannot change while it is ranged over: the expired are
	// gathered first. A sweep finds few, and runs every sweepEvery.
	var expired []uint64
	c.inflight.index.Range(func(cookie uint64, i int32) bool {
		if c.inflight.slots[i].time < cutoff {
			expired = append(expired, cookie)
		}
		return true
	})
	for _, cookie := range expired {
		c.inflight.take(cookie)
	}
	// A start whose outcome the kernel lost was counted then: which of
	// those waiting it is cannot be told, only how many there are.
	n := uint64(len(expired))
	counted := min(n, c.orphans)
	c.orphans -= counted
	if n > counted {
		c.lose(lossConnExpired, n-counted)
	}
}
