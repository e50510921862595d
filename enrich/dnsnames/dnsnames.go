// Package dnsnames remembers which name each network namespace resolved to
// which address, from the DNS answers the node receives, so that a later
// connect to the address can be reported with the name the caller asked
// for rather than a bare IP. Entries live as long as the answer's TTL
// allows, within bounds, and the map holds at most a fixed number of them.
//
// The name kept is the question's, not the owner of the address record:
// callers and policies know api.example.com, not the CDN edge it is a
// CNAME for. Network namespaces are kept apart because each has its own
// resolver configuration and may see different answers for one name.
package dnsnames

import (
	"errors"
	"math"
	"net/netip"
	"sync/atomic"
	"time"
	"unique"
)

// Errors returned by ObserveUDP and ObserveTCP, wrapped with the detail.
var (
	// ErrMalformed: the bytes are not a DNS message up to the end of its
	// answer section. Nothing of the message is recorded.
	ErrMalformed = errors.New("dnsnames: malformed DNS message")
	// ErrTruncated: a TCP payload ends inside a message, as captures cut
	// short do. The incomplete message is not recorded.
	ErrTruncated = errors.New("dnsnames: truncated DNS message")
)

// Config tunes a Map; zero values pick defaults.
type Config struct {
	// MaxEntries bounds the (netns, address) pairs held, and so memory: a
	// node resolving more addresses than this within their TTL loses the
	// least recently used. Default 65536.
	MaxEntries int
	// MinTTL is the least time an answer is kept. The connect follows the
	// answer, sometimes by more than the TTL: TTL 0 answers are common, and
	// callers hold on to addresses beyond their TTL. Default 30s.
	MinTTL time.Duration
	// MaxTTL is the most time an answer is kept: an address reassigned
	// under a long TTL must not carry its old name for days. Default 1h.
	MaxTTL time.Duration
}

// Stats counts what the Map saw. Every field only grows.
type Stats struct {
	Responses      uint64 // successful responses parsed
	Answers        uint64 // answer records looked at
	AnswersSkipped uint64 // answer records past the per-message cap
	Unchained      uint64 // address records ignored: owner not reached from the question
	Recorded       uint64 // addresses recorded or refreshed
	Malformed      uint64 // messages that did not parse
	Truncated      uint64 // TCP messages cut short
	Evicted        uint64 // live entries dropped to make room
	ExpiredLookups uint64 // lookups that found an entry past its TTL
}

// key is an address as 16 bytes: IPv4 addresses and their IPv4-mapped IPv6
// form are the same key, since a socket reaches the same peer by either.
// Zones are dropped; answers carry none.
type key struct {
	netns uint32
	addr  [16]byte
}

// none marks the end of the recency list and of the free list.
const none = -1

// entry is one (netns, address) with its name. Entries sit in a slice and
// link to each other by index: a dropped entry's slot is reused without
// allocating, and the links cost 8 bytes an entry, not 16.
type entry struct {
	key     key
	name    unique.Handle[string] // shared by every address of the name
	expires int64                 // Unix nanoseconds, by the clock of the now passed in
	// prev and next link the recency list, most recent first; next also
	// links the free list.
	prev, next int32
}

// Map maps (network namespace, address) to the name last resolved to it.
// Observe* and Lookup are for one goroutine; Len and Stats may be called
// from any.
type Map struct {
	cfg     Config
	index   map[key]int32
	entries []entry
	head    int32 // most recently used
	tail    int32 // least recently used, the next to go
	free    int32
	scratch *message
	n       atomic.Int64

	responses, answers, skipped, unchained atomic.Uint64
	recorded, malformed, truncated         atomic.Uint64
	evicted, expiredLookups                atomic.Uint64
}

// NewMap returns an empty Map.
func NewMap(cfg Config) *Map {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 65536
	}
	cfg.MaxEntries = min(cfg.MaxEntries, math.MaxInt32) // entries link by int32
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 30 * time.Second
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = time.Hour
	}
	cfg.MaxTTL = max(cfg.MaxTTL, cfg.MinTTL)
	// Entries are a map index plus a slice element; both grow with use
	// rather than up front, as most nodes never come near the bound.
	return &Map{
		cfg:     cfg,
		index:   make(map[key]int32),
		head:    none,
		tail:    none,
		free:    none,
		scratch: new(message),
	}
}

// Len is the number of entries held. Expired entries count until a lookup
// finds them or they are dropped to make room.
func (m *Map) Len() int { return int(m.n.Load()) }

// Stats returns the counts so far.
func (m *Map) Stats() Stats {
	return Stats{
		Responses: m.responses.Load(), Answers: m.answers.Load(),
		AnswersSkipped: m.skipped.Load(), Unchained: m.unchained.Load(),
		Recorded: m.recorded.Load(), Malformed: m.malformed.Load(),
		Truncated: m.truncated.Load(), Evicted: m.evicted.Load(),
		ExpiredLookups: m.expiredLookups.Load(),
	}
}

// Lookup returns the name last resolved to addr in netns, if its answer
// has not expired. It does not allocate: it runs once per connect.
func (m *Map) Lookup(netns uint32, addr netip.Addr, now time.Time) (name string, ok bool) {
	if !addr.IsValid() {
		return "", false
	}
	i, ok := m.index[key{netns, addr.As16()}]
	if !ok {
		return "", false
	}
	e := &m.entries[i]
	if now.UnixNano() >= e.expires {
		// The caller may still connect to it, but the name no longer
		// holds: the address may have moved on to another name.
		m.expiredLookups.Add(1)
		m.remove(i)
		return "", false
	}
	m.toFront(i)
	return e.name.Value(), true
}

// record sets the name of addr in netns. The most recent answer wins: it
// is what the caller now connects by. Its expiry stays the later of the
// two when the name is unchanged, since the caller may still hold the
// address under the earlier, longer answer.
func (m *Map) record(netns uint32, addr [16]byte, name unique.Handle[string], now, expires int64) {
	k := key{netns, addr}
	if i, ok := m.index[k]; ok {
		e := &m.entries[i]
		if e.name != name {
			e.name, e.expires = name, expires
		} else {
			e.expires = max(e.expires, expires)
		}
		m.toFront(i)
		return
	}
	i := m.alloc(now)
	m.entries[i] = entry{key: k, name: name, expires: expires, prev: none, next: none}
	m.index[k] = i
	m.n.Add(1)
	m.pushFront(i)
}

// alloc returns a free slot, dropping the least recently used entry when
// the Map is full. Only a live entry dropped counts as an eviction: one
// past its TTL was of no use.
func (m *Map) alloc(now int64) int32 {
	if m.free == none {
		if len(m.entries) < m.cfg.MaxEntries {
			m.entries = append(m.entries, entry{})
			return int32(len(m.entries) - 1)
		}
		if m.entries[m.tail].expires > now {
			m.evicted.Add(1)
		}
		m.remove(m.tail)
	}
	i := m.free
	m.free = m.entries[i].next
	return i
}

// remove drops entry i and puts its slot on the free list.
func (m *Map) remove(i int32) {
	e := &m.entries[i]
	delete(m.index, e.key)
	m.unlink(i)
	*e = entry{prev: none, next: m.free}
	m.free = i
	m.n.Add(-1)
}

func (m *Map) unlink(i int32) {
	e := &m.entries[i]
	if e.prev != none {
		m.entries[e.prev].next = e.next
	} else {
		m.head = e.next
	}
	if e.next != none {
		m.entries[e.next].prev = e.prev
	} else {
		m.tail = e.prev
	}
	e.prev, e.next = none, none
}

func (m *Map) pushFront(i int32) {
	e := &m.entries[i]
	e.prev, e.next = none, m.head
	if m.head != none {
		m.entries[m.head].prev = i
	} else {
		m.tail = i
	}
	m.head = i
}

func (m *Map) toFront(i int32) {
	if m.head != i {
		m.unlink(i)
		m.pushFront(i)
	}
}
