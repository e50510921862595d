package dnsnames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
	"unique"

	"golang.org/x/net/dns/dnsmessage"
)

// maxAnswers bounds the answer records looked at per message, and so the
// work and scratch space one message can cost: a 64 KiB TCP message holds
// thousands of records, no real answer a caller connects by more than a
// few dozen. Records past it are skipped and counted.
const maxAnswers = 64

// maxNames is the most distinct names one message brings: the question's
// and two per answer record (a CNAME's owner and target).
const maxNames = 1 + 2*maxAnswers

// message is the scratch space of one parse, kept with the Map so that
// parsing costs no allocation but the name's string.
type message struct {
	names   [maxNames]dnsmessage.Name // lowercased; the question's first
	n       int
	reached [maxNames]bool
	ttl     [maxNames]uint32 // least TTL on the way from the question
	answers [maxAnswers]answer
}

// answer is an A, AAAA or CNAME record, its names as indexes in names.
type answer struct {
	owner, target uint8
	cname         bool
	addr          [16]byte
	ttl           uint32
}

var errRDataLength = errors.New("address record of the wrong length")

// ObserveUDP records the addresses msg, one DNS message, names. added counts
// the addresses recorded or refreshed. An error, wrapping ErrMalformed,
// means nothing of msg was recorded: a message is taken whole or not at
// all. Queries, failed responses and records the question does not lead to
// are ignored without error: they are ordinary traffic.
//
// Only the header, question and answer sections are read, so a message
// cut short after its answers still counts. A message cut short before
// that is malformed: DNS over UDP does not say how long the message was.
// A response with the TC bit set counts for the whole records it holds;
// the caller then asks again over TCP, and that answer counts too.
func (m *Map) ObserveUDP(netns uint32, msg []byte, now time.Time) (added int, err error) {
	added, err = m.observe(netns, msg, now)
	if err != nil {
		m.malformed.Add(1)
		return 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return added, nil
}

// ObserveTCP records the addresses named by payload, DNS messages each
// prefixed by its 2-byte length as on a TCP stream. payload must begin at
// a length prefix: bytes from the middle of a message would be read as
// lengths, and what follows rejected as malformed. A last message cut
// short is not recorded and yields ErrTruncated: what it would have said
// is not guessed. Every complete message is observed even when another is
// malformed; err is the first problem met.
func (m *Map) ObserveTCP(netns uint32, payload []byte, now time.Time) (added int, err error) {
	for len(payload) > 0 {
		if len(payload) < 2 {
			m.truncated.Add(1)
			return added, firstErr(err, fmt.Errorf("%w: length prefix cut short", ErrTruncated))
		}
		n := int(binary.BigEndian.Uint16(payload))
		if n > len(payload)-2 {
			m.truncated.Add(1)
			return added, firstErr(err, fmt.Errorf("%w: %d of %d bytes", ErrTruncated, len(payload)-2, n))
		}
		a, e := m.ObserveUDP(netns, payload[2:2+n], now)
		added += a
		err = firstErr(err, e)
		payload = payload[2+n:]
	}
	return added, err
}

// firstErr returns the first non-nil error.
func firstErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}

func (m *Map) observe(netns uint32, msg []byte, now time.Time) (int, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return 0, err
	}
	// A query names nothing, and an error or a non-standard opcode answers
	// no lookup a caller connects by.
	if !h.Response || h.OpCode != 0 || h.RCode != dnsmessage.RCodeSuccess {
		return 0, nil
	}
	q, err := p.Question()
	if errors.Is(err, dnsmessage.ErrSectionDone) {
		return 0, nil // nothing asked, so no name to record
	}
	if err != nil {
		return 0, err
	}
	// Resolvers ask one question per message (RFC 9619); with several,
	// which one an address answers is a guess.
	switch _, err := p.Question(); {
	case err == nil:
		return 0, nil
	case !errors.Is(err, dnsmessage.ErrSectionDone):
		return 0, err
	}
	if q.Class != dnsmessage.ClassINET {
		return 0, nil
	}

	s := m.scratch
	s.n = 0
	s.intern(&q.Name)
	if !isHostname(&s.names[0]) {
		// Not a name a caller connects by, nor one fit for events and
		// policies; and no fault of the message.
		return 0, nil
	}

	var looked, skipped, k int
	for {
		h, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return 0, err
		}
		if looked == maxAnswers {
			skipped++
			if err := p.SkipAnswer(); err != nil {
				return 0, err
			}
			continue
		}
		looked++
		a := answer{ttl: h.TTL}
		switch {
		case h.Class != dnsmessage.ClassINET:
			if err := p.SkipAnswer(); err != nil {
				return 0, err
			}
			continue
		case h.Type == dnsmessage.TypeA:
			// dnsmessage reads four bytes whatever the record's length
			// says; a record that disagrees is not one to trust.
			if h.Length != 4 {
				return 0, errRDataLength
			}
			r, err := p.AResource()
			if err != nil {
				return 0, err
			}
			a.addr = netip.AddrFrom4(r.A).As16()
		case h.Type == dnsmessage.TypeAAAA:
			if h.Length != 16 {
				return 0, errRDataLength
			}
			r, err := p.AAAAResource()
			if err != nil {
				return 0, err
			}
			// The 16 bytes of an IPv4-mapped address are those As16
			// gives its IPv4 address: the key is the same, so a connect
			// by either finds it.
			a.addr = r.AAAA
		case h.Type == dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				return 0, err
			}
			a.cname = true
			a.target = s.intern(&r.CNAME)
		default:
			if err := p.SkipAnswer(); err != nil {
				return 0, err
			}
			continue
		}
		a.owner = s.intern(&h.Name)
		s.answers[k] = a
		k++
	}
	m.responses.Add(1)
	m.answers.Add(uint64(looked))
	m.skipped.Add(uint64(skipped))

	s.chase(s.answers[:k])
	var (
		name    unique.Handle[string]
		named   bool
		added   int
		nowNano = now.UnixNano()
	)
	for _, a := range s.answers[:k] {
		if a.cname {
			continue
		}
		if !s.reached[a.owner] {
			m.unchained.Add(1)
			continue
		}
		// A blocking resolver answers the unspecified address for every
		// name it blocks: it names nothing.
		if netip.AddrFrom16(a.addr).Unmap().IsUnspecified() {
			continue
		}
		if !named {
			// One string per message, shared by all its addresses and
			// by every other entry of the name for as long as any
			// holds it.
			q := &s.names[0]
			name, named = unique.Make(string(q.Data[:q.Length-1])), true
		}
		ttl := min(a.ttl, s.ttl[a.owner])
		m.record(netns, a.addr, name, nowNano, nowNano+int64(m.lifetime(ttl)))
		added++
	}
	m.recorded.Add(uint64(added))
	return added, nil
}

// chase marks the names reached from the question through the CNAMEs of
// answers. A record whose owner is not reached is ignored: the caller's
// resolver drops it too, so it is not what the caller connects to, and
// taking it would let any answer put the question's name on any address.
// Each pass reaches at least one more name or ends, so chase ends in at
// most maxNames passes whatever loops the CNAMEs make.
func (s *message) chase(answers []answer) {
	clear(s.reached[:s.n])
	s.reached[0], s.ttl[0] = true, math.MaxUint32
	for more := true; more; {
		more = false
		for _, a := range answers {
			if a.cname && s.reached[a.owner] && !s.reached[a.target] {
				s.reached[a.target] = true
				s.ttl[a.target] = min(s.ttl[a.owner], a.ttl)
				more = true
			}
		}
	}
}

// intern returns the index of name in s.names, adding it lowercased if it
// is new. DNS names compare without regard to ASCII case (RFC 4343), and
// resolvers echo the question's case back, 0x20-randomised or not.
func (s *message) intern(name *dnsmessage.Name) uint8 {
	lower(name)
	b := name.Data[:name.Length]
	for i := range s.n {
		if n := &s.names[i]; n.Length == name.Length && string(n.Data[:n.Length]) == string(b) {
			return uint8(i)
		}
	}
	s.names[s.n] = *name
	s.n++
	return uint8(s.n - 1)
}

func lower(name *dnsmessage.Name) {
	for i, c := range name.Data[:name.Length] {
		if 'A' <= c && c <= 'Z' {
			name.Data[i] = c + 'a' - 'A'
		}
	}
}

// isHostname accepts a lowercased question name as a name to record:
// not the root, and printable ASCII, which names (IDNs included, as
// punycode) are on the wire. Anything else would put control bytes or
// stray encodings in events, and no policy could name it.
func isHostname(name *dnsmessage.Name) bool {
	b := name.Data[:name.Length]
	if len(b) <= 1 {
		return false
	}
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// lifetime is how long an answer of ttl seconds is kept. A TTL with its top
// bit set is taken as zero, as RFC 2181 (section 8) says.
func (m *Map) lifetime(ttl uint32) time.Duration {
	if ttl > math.MaxInt32 {
		ttl = 0
	}
	return min(max(time.Duration(ttl)*time.Second, m.cfg.MinTTL), m.cfg.MaxTTL)
}
