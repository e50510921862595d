package collector

import (
	"time"

	"github.com/callscope/callscope/internal/cookieindex"
)

// DefaultTLSPorts are the ports where TLS is expected unless Config says
// otherwise: HTTPS, the Kubernetes API and its usual alternatives, AMQP
// and Kafka over TLS, and etcd.
var DefaultTLSPorts = []uint16{443, 6443, 8443, 9443, 5671, 9093, 2379}

// firstDataWait bounds how long an established connect to a TLS port
// waits for its first data before its event goes without knowing it: a
// client speaks first in TLS, right after the handshake.
const firstDataWait = time.Second

// maxHeld bounds the connects held for their first data; beyond it, an
// established connect to a TLS port goes at once, and is counted.
const maxHeld = 8192

// portSet is a set of ports, one bit each, laid out as the kernel's
// tls_ports map.
type portSet [1024]uint64

func newPortSet(ports []uint16) *portSet {
	var s portSet
	for _, p := range ports {
		s[p>>6] |= 1 << (p & 63)
	}
	return &s
}

func (s *portSet) has(p uint16) bool { return s != nil && s[p>>6]>>(p&63)&1 != 0 }

// held keeps established connects to TLS ports until their first data
// says whether it was a TLS handshake: a ClientHello record, or the
// kernel's plaintext record. Its slots are reused, as inflight's are.
type held struct {
	index cookieindex.Index
	slots []heldConnect
	free  []int32
	// Full counts connects that went without waiting, maxHeld being held.
	Full uint64
}

type heldConnect struct {
	ev       Event
	deadline time.Time
}

// hold keeps ev until its first data or the deadline; it reports false
// when maxHeld are held already.
func (h *held) hold(ev *Event, deadline time.Time) bool {
	if h.index.Len() >= maxHeld {
		h.Full++
		return false
	}
	v, found := h.index.Upsert(ev.Cookie)
	if !found {
		if n := len(h.free); n > 0 {
			*v, h.free = h.free[n-1], h.free[:n-1]
		} else {
			*v = int32(len(h.slots))
			h.slots = append(h.slots, heldConnect{})
		}
	}
	h.slots[*v] = heldConnect{ev: *ev, deadline: deadline}
	return true
}

// take removes the connect held for cookie, if any.
func (h *held) take(cookie uint64) (*Event, bool) {
	i, ok := h.index.Delete(cookie)
	if !ok {
		return nil, false
	}
	h.free = append(h.free, i)
	return &h.slots[i].ev, true
}

// expired removes and passes to emit every connect whose deadline is
// before now, or all of them.
func (h *held) expired(now time.Time, all bool, emit func(*Event)) {
	if h.index.Len() == 0 {
		return
	}
	var done []uint64
	h.index.Range(func(cookie uint64, i int32) bool {
		if all || h.slots[i].deadline.Before(now) {
			done = append(done, cookie)
		}
		return true
	})
	for _, cookie := range done {
		if ev, ok := h.take(cookie); ok {
			emit(ev)
		}
	}
}
