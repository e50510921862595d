package dnsnames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// Header flags of the messages the tests build.
var (
	okResponse = dnsmessage.Header{ID: 0x1234, Response: true, RecursionDesired: true, RecursionAvailable: true}
	nxdomain   = dnsmessage.Header{ID: 0x1234, Response: true, RCode: dnsmessage.RCodeNameError}
	servfail   = dnsmessage.Header{ID: 0x1234, Response: true, RCode: dnsmessage.RCodeServerFailure}
	query      = dnsmessage.Header{ID: 0x1234, RecursionDesired: true}
)

func name(s string) dnsmessage.Name { return dnsmessage.MustNewName(s) }

func a(owner string, ttl uint32, addr string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: name(owner), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   &dnsmessage.AResource{A: netip.MustParseAddr(addr).As4()},
	}
}

func aaaa(owner string, ttl uint32, addr string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: name(owner), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(addr).As16()},
	}
}

func cname(owner string, ttl uint32, target string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: name(owner), Type: dnsmessage.TypeCNAME, Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   &dnsmessage.CNAMEResource{CNAME: name(target)},
	}
}

// msg packs a message asking q (type A unless the first answer says
// otherwise) with answers.
func msg(tb testing.TB, h dnsmessage.Header, q string, answers ...dnsmessage.Resource) []byte {
	tb.Helper()
	qtype := dnsmessage.TypeA
	for _, r := range answers {
		if r.Header.Type == dnsmessage.TypeAAAA {
			qtype = dnsmessage.TypeAAAA
		}
	}
	m := dnsmessage.Message{
		Header:    h,
		Questions: []dnsmessage.Question{{Name: name(q), Type: qtype, Class: dnsmessage.ClassINET}},
		Answers:   answers,
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// frame prefixes each message with its length, as on a TCP stream.
func frame(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

type observation struct {
	netns uint32
	at    time.Duration // after t0
	msg   []byte
}

type lookup struct {
	netns uint32
	at    time.Duration
	addr  string
	want  string // "" for no name
}

func TestObserve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		observe []observation
		lookups []lookup
		added   int // by all observations
	}{
		{
			name:    "A",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 300, "93.184.215.14"))}},
			lookups: []lookup{{1, 0, "93.184.215.14", "example.com"}, {1, 0, "93.184.215.15", ""}},
			added:   1,
		},
		{
			name: "several A",
			observe: []observation{{1, 0, msg(t, okResponse, "api.example.com.",
				a("api.example.com.", 60, "10.0.0.1"), a("api.example.com.", 60, "10.0.0.2"), a("api.example.com.", 60, "10.0.0.3"))}},
			lookups: []lookup{{1, 0, "10.0.0.1", "api.example.com"}, {1, 0, "10.0.0.3", "api.example.com"}},
			added:   3,
		},
		{
			name:    "AAAA",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", aaaa("example.com.", 300, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"))}},
			lookups: []lookup{{1, 0, "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "example.com"}},
			added:   1,
		},
		{
			name:    "case and trailing dot",
			observe: []observation{{1, 0, msg(t, okResponse, "WWW.Example.COM.", a("www.EXAMPLE.com.", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", "www.example.com"}},
			added:   1,
		},
		{
			name: "CNAME chain",
			observe: []observation{{1, 0, msg(t, okResponse, "www.example.com.",
				cname("www.example.com.", 300, "www.example.com.cdn.net."),
				cname("www.example.com.cdn.net.", 300, "e1.cdn.net."),
				a("e1.cdn.net.", 20, "192.0.2.7"))}},
			lookups: []lookup{{1, 0, "192.0.2.7", "www.example.com"}},
			added:   1,
		},
		{
			name: "CNAME chain out of order",
			observe: []observation{{1, 0, msg(t, okResponse, "www.example.com.",
				aaaa("e1.cdn.net.", 20, "2001:db8::7"),
				cname("www.example.com.cdn.net.", 300, "e1.cdn.net."),
				cname("www.example.com.", 300, "www.example.com.cdn.net."))}},
			lookups: []lookup{{1, 0, "2001:db8::7", "www.example.com"}},
			added:   1,
		},
		{
			name: "unreachable owners ignored",
			observe: []observation{{1, 0, msg(t, okResponse, "www.example.com.",
				a("www.example.com.", 300, "192.0.2.1"),
				a("bank.example.", 300, "192.0.2.2"),
				cname("other.example.", 300, "x.example."),
				a("x.example.", 300, "192.0.2.3"),
				cname("e1.cdn.net.", 300, "www.example.com."), // points at the question, not from it
				a("e1.cdn.net.", 300, "192.0.2.4"))}},
			lookups: []lookup{
				{1, 0, "192.0.2.1", "www.example.com"}, {1, 0, "192.0.2.2", ""},
				{1, 0, "192.0.2.3", ""}, {1, 0, "192.0.2.4", ""},
			},
			added: 1,
		},
		{
			name: "CNAME loop",
			observe: []observation{{1, 0, msg(t, okResponse, "a.example.",
				cname("a.example.", 300, "b.example."), cname("b.example.", 300, "a.example."),
				a("b.example.", 300, "192.0.2.9"))}},
			lookups: []lookup{{1, 0, "192.0.2.9", "a.example"}},
			added:   1,
		},
		{
			name:    "NXDOMAIN ignored",
			observe: []observation{{1, 0, msg(t, nxdomain, "example.com.", a("example.com.", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", ""}},
		},
		{
			name:    "SERVFAIL ignored",
			observe: []observation{{1, 0, msg(t, servfail, "example.com.", a("example.com.", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", ""}},
		},
		{
			name:    "query ignored",
			observe: []observation{{1, 0, msg(t, query, "example.com.", a("example.com.", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", ""}},
		},
		{
			name:    "unspecified address ignored",
			observe: []observation{{1, 0, msg(t, okResponse, "ads.example.", a("ads.example.", 300, "0.0.0.0"), aaaa("ads.example.", 300, "::"))}},
			lookups: []lookup{{1, 0, "0.0.0.0", ""}, {1, 0, "::", ""}},
		},
		{
			name:    "root question ignored",
			observe: []observation{{1, 0, msg(t, okResponse, ".", a(".", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", ""}},
		},
		{
			name:    "TTL 0 kept for MinTTL",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 0, "192.0.2.1"))}},
			lookups: []lookup{{1, 29 * time.Second, "192.0.2.1", "example.com"}, {1, 30 * time.Second, "192.0.2.1", ""}},
			added:   1,
		},
		{
			name:    "TTL with the top bit set is 0",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 1<<31, "192.0.2.1"))}},
			lookups: []lookup{{1, 29 * time.Second, "192.0.2.1", "example.com"}, {1, 30 * time.Second, "192.0.2.1", ""}},
			added:   1,
		},
		{
			name:    "expiry after TTL",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 120, "192.0.2.1"))}},
			lookups: []lookup{{1, 119 * time.Second, "192.0.2.1", "example.com"}, {1, 120 * time.Second, "192.0.2.1", ""}},
			added:   1,
		},
		{
			name:    "TTL capped at MaxTTL",
			observe: []observation{{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 86400, "192.0.2.1"))}},
			lookups: []lookup{{1, time.Hour - 1, "192.0.2.1", "example.com"}, {1, time.Hour, "192.0.2.1", ""}},
			added:   1,
		},
		{
			name: "least TTL along the chain",
			observe: []observation{{1, 0, msg(t, okResponse, "www.example.com.",
				cname("www.example.com.", 60, "e1.cdn.net."), a("e1.cdn.net.", 3600, "192.0.2.1"))}},
			lookups: []lookup{{1, 59 * time.Second, "192.0.2.1", "www.example.com"}, {1, 60 * time.Second, "192.0.2.1", ""}},
			added:   1,
		},
		{
			name: "later answer replaces the name",
			observe: []observation{
				{1, 0, msg(t, okResponse, "old.example.", a("old.example.", 3600, "192.0.2.1"))},
				{1, 10 * time.Second, msg(t, okResponse, "new.example.", a("new.example.", 60, "192.0.2.1"))},
			},
			lookups: []lookup{{1, 11 * time.Second, "192.0.2.1", "new.example"}, {1, 70 * time.Second, "192.0.2.1", ""}},
			added:   2,
		},
		{
			name: "later answer extends expiry",
			observe: []observation{
				{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 60, "192.0.2.1"))},
				{1, 50 * time.Second, msg(t, okResponse, "example.com.", a("example.com.", 60, "192.0.2.1"))},
			},
			lookups: []lookup{{1, 100 * time.Second, "192.0.2.1", "example.com"}, {1, 110 * time.Second, "192.0.2.1", ""}},
			added:   2,
		},
		{
			name: "shorter answer of the same name does not cut expiry",
			observe: []observation{
				{1, 0, msg(t, okResponse, "example.com.", a("example.com.", 600, "192.0.2.1"))},
				{1, 10 * time.Second, msg(t, okResponse, "example.com.", a("example.com.", 0, "192.0.2.1"))},
			},
			lookups: []lookup{{1, 599 * time.Second, "192.0.2.1", "example.com"}},
			added:   2,
		},
		{
			name: "network namespaces apart",
			observe: []observation{
				{1, 0, msg(t, okResponse, "one.example.", a("one.example.", 300, "192.0.2.1"))},
				{2, 0, msg(t, okResponse, "two.example.", a("two.example.", 300, "192.0.2.1"))},
				{2, 0, msg(t, okResponse, "two.example.", a("two.example.", 300, "192.0.2.2"))},
			},
			lookups: []lookup{
				{1, 0, "192.0.2.1", "one.example"}, {2, 0, "192.0.2.1", "two.example"},
				{1, 0, "192.0.2.2", ""}, {3, 0, "192.0.2.1", ""},
			},
			added: 3,
		},
		{
			name:    "IPv4-mapped answer found by IPv4",
			observe: []observation{{1, 0, msg(t, okResponse, "v4.example.", aaaa("v4.example.", 300, "::ffff:192.0.2.1"))}},
			lookups: []lookup{{1, 0, "192.0.2.1", "v4.example"}, {1, 0, "::ffff:192.0.2.1", "v4.example"}},
			added:   1,
		},
		{
			name:    "IPv4 answer found by IPv4-mapped",
			observe: []observation{{1, 0, msg(t, okResponse, "v4.example.", a("v4.example.", 300, "192.0.2.1"))}},
			lookups: []lookup{{1, 0, "::ffff:192.0.2.1", "v4.example"}, {1, 0, "::192.0.2.1", ""}},
			added:   1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMap(Config{})
			added := 0
			for _, o := range tc.observe {
				n, err := m.ObserveUDP(o.netns, o.msg, t0.Add(o.at))
				if err != nil {
					t.Fatal(err)
				}
				added += n
			}
			if added != tc.added {
				t.Errorf("added %d, want %d", added, tc.added)
			}
			for _, l := range tc.lookups {
				got, ok := m.Lookup(l.netns, netip.MustParseAddr(l.addr), t0.Add(l.at))
				if got != l.want || ok != (l.want != "") {
					t.Errorf("Lookup(%d, %s) at +%v = %q, %v; want %q", l.netns, l.addr, l.at, got, ok, l.want)
				}
			}
		})
	}
}

func TestUnchainedCounted(t *testing.T) {
	m := NewMap(Config{})
	m.ObserveUDP(1, msg(t, okResponse, "www.example.com.",
		a("www.example.com.", 300, "192.0.2.1"), a("bank.example.", 300, "192.0.2.2")), t0)
	if s := m.Stats(); s.Unchained != 1 || s.Recorded != 1 || s.Responses != 1 || s.Answers != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestTCP(t *testing.T) {
	m := NewMap(Config{})
	one := msg(t, okResponse, "one.example.", a("one.example.", 300, "192.0.2.1"))
	two := msg(t, okResponse, "two.example.", aaaa("two.example.", 300, "2001:db8::2"), aaaa("two.example.", 300, "2001:db8::3"))
	three := msg(t, okResponse, "three.example.", a("three.example.", 300, "192.0.2.3"))

	added, err := m.ObserveTCP(1, frame(one, two), t0)
	if err != nil || added != 3 {
		t.Fatalf("two whole messages: added %d, %v; want 3, nil", added, err)
	}

	payload := frame(one, two, three)
	for cut := len(payload) - len(three) - 1; cut < len(payload); cut++ {
		m := NewMap(Config{})
		added, err := m.ObserveTCP(1, payload[:cut], t0)
		if !errors.Is(err, ErrTruncated) || added != 3 {
			t.Fatalf("cut at %d: added %d, %v; want 3, ErrTruncated", cut, added, err)
		}
		if _, ok := m.Lookup(1, netip.MustParseAddr("192.0.2.3"), t0); ok {
			t.Fatalf("cut at %d: the cut message was recorded", cut)
		}
		if name, _ := m.Lookup(1, netip.MustParseAddr("2001:db8::3"), t0); name != "two.example" {
			t.Fatalf("cut at %d: the message before the cut one was not recorded", cut)
		}
		if s := m.Stats(); s.Truncated != 1 || s.Malformed != 0 {
			t.Fatalf("cut at %d: stats %+v", cut, s)
		}
	}

	// A malformed message does not stop the next.
	m = NewMap(Config{})
	added, err = m.ObserveTCP(1, frame([]byte{1, 2, 3}, three), t0)
	if !errors.Is(err, ErrMalformed) || added != 1 {
		t.Errorf("malformed then whole: added %d, %v; want 1, ErrMalformed", added, err)
	}
	if s := m.Stats(); s.Malformed != 1 || s.Truncated != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestMaxEntries(t *testing.T) {
	m := NewMap(Config{MaxEntries: 4})
	observe := func(i int, ttl uint32, at time.Duration) {
		t.Helper()
		host := fmt.Sprintf("h%d.example.", i)
		if _, err := m.ObserveUDP(1, msg(t, okResponse, host, a(host, ttl, fmt.Sprintf("192.0.2.%d", i))), t0.Add(at)); err != nil {
			t.Fatal(err)
		}
	}
	has := func(i int, at time.Duration) bool {
		_, ok := m.Lookup(1, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), t0.Add(at))
		return ok
	}
	for i := 1; i <= 4; i++ {
		observe(i, 300, 0)
	}
	if !has(1, 0) { // 1 is now the most recently used, 2 the least
		t.Fatal("entry 1 missing before the bound")
	}
	observe(5, 300, 0)
	if m.Len() != 4 {
		t.Errorf("Len %d, want 4", m.Len())
	}
	if has(2, 0) {
		t.Error("the least recently used entry survived")
	}
	for _, i := range []int{1, 3, 4, 5} {
		if !has(i, 0) {
			t.Errorf("entry %d dropped", i)
		}
	}
	if s := m.Stats(); s.Evicted != 1 {
		t.Errorf("%d evictions, want 1", s.Evicted)
	}

	// An entry dropped once expired is not an eviction.
	observe(6, 0, 10*time.Minute)
	if s := m.Stats(); s.Evicted != 1 {
		t.Errorf("%d evictions after dropping an expired entry, want 1", s.Evicted)
	}

	for i := range 1000 {
		host := fmt.Sprintf("n%d.example.", i)
		m.ObserveUDP(uint32(i), msg(t, okResponse, host, a(host, 300, "198.51.100.1")), t0)
		if m.Len() > 4 {
			t.Fatalf("Len %d after %d more, want at most 4", m.Len(), i+1)
		}
	}
}

func TestExpiredLookupFrees(t *testing.T) {
	m := NewMap(Config{})
	m.ObserveUDP(1, msg(t, okResponse, "example.com.", a("example.com.", 60, "192.0.2.1")), t0)
	if m.Len() != 1 {
		t.Fatalf("Len %d, want 1", m.Len())
	}
	if _, ok := m.Lookup(1, netip.MustParseAddr("192.0.2.1"), t0.Add(time.Hour)); ok {
		t.Fatal("expired entry found")
	}
	if m.Len() != 0 || m.Stats().ExpiredLookups != 1 {
		t.Errorf("Len %d, stats %+v after an expired lookup", m.Len(), m.Stats())
	}
	// The freed slot is reused.
	m.ObserveUDP(1, msg(t, okResponse, "example.org.", a("example.org.", 60, "192.0.2.2")), t0.Add(time.Hour))
	if name, _ := m.Lookup(1, netip.MustParseAddr("192.0.2.2"), t0.Add(time.Hour)); name != "example.org" || len(m.entries) != 1 {
		t.Errorf("got %q with %d slots", name, len(m.entries))
	}
}

func TestAnswerCap(t *testing.T) {
	var answers []dnsmessage.Resource
	for i := range maxAnswers + 6 {
		answers = append(answers, a("many.example.", 300, fmt.Sprintf("10.0.%d.%d", i/256, i%256)))
	}
	m := NewMap(Config{})
	added, err := m.ObserveUDP(1, msg(t, okResponse, "many.example.", answers...), t0)
	if err != nil || added != maxAnswers {
		t.Fatalf("added %d, %v; want %d, nil", added, err, maxAnswers)
	}
	if s := m.Stats(); s.AnswersSkipped != 6 || s.Answers != maxAnswers {
		t.Errorf("stats %+v", s)
	}
}

func TestSharedName(t *testing.T) {
	m := NewMap(Config{})
	m.ObserveUDP(1, msg(t, okResponse, "example.com.", a("example.com.", 300, "192.0.2.1"), a("example.com.", 300, "192.0.2.2")), t0)
	m.ObserveUDP(2, msg(t, okResponse, "example.com.", a("example.com.", 300, "192.0.2.3")), t0)
	if m.entries[0].name != m.entries[1].name || m.entries[0].name != m.entries[2].name {
		t.Error("one name held more than once")
	}
}

func TestMalformed(t *testing.T) {
	good := msg(t, okResponse, "example.com.", a("example.com.", 300, "192.0.2.1"))
	hdr := func(qd, an uint16) []byte {
		return []byte{0x12, 0x34, 0x81, 0x80, byte(qd >> 8), byte(qd), byte(an >> 8), byte(an), 0, 0, 0, 0}
	}
	question := []byte{7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1}
	answerA := func(rdlen byte, rdata ...byte) []byte {
		return append([]byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, rdlen}, rdata...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"short header", good[:11]},
		{"cut in the question", good[:20]},
		{"cut in the answer", good[:len(good)-2]},
		{"more answers than sent", cat(hdr(1, 3), question, answerA(4, 192, 0, 2, 1))},
		{"more questions than sent", cat(hdr(3, 0), question)},
		{"A of 2 bytes", cat(hdr(1, 1), question, answerA(2, 192, 0), answerA(4, 192, 0, 2, 1))},
		{"A of 6 bytes", cat(hdr(1, 1), question, answerA(6, 192, 0, 2, 1, 0, 0))},
		{"pointer to itself", cat(hdr(1, 0), []byte{0xc0, 12, 0, 1, 0, 1})},
		{"pointer loop", cat(hdr(1, 1), question, []byte{0xc0, 31, 0xc0, 29, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1})},
		{"pointer past the end", cat(hdr(1, 1), question, []byte{0xc0, 0xff, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1})},
		{"reserved label type", cat(hdr(1, 0), []byte{0x40, 'a', 0, 0, 1, 0, 1})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMap(Config{})
			added, err := m.ObserveUDP(1, tc.msg, t0)
			if !errors.Is(err, ErrMalformed) || added != 0 {
				t.Errorf("added %d, %v; want 0, ErrMalformed", added, err)
			}
			if m.Len() != 0 || m.Stats().Malformed != 1 {
				t.Errorf("Len %d, stats %+v", m.Len(), m.Stats())
			}
		})
	}
	// The hand-built pieces make a good message when the counts hold.
	m := NewMap(Config{})
	if added, err := m.ObserveUDP(1, cat(hdr(1, 1), question, answerA(4, 192, 0, 2, 1)), t0); added != 1 || err != nil {
		t.Errorf("hand-built message: added %d, %v", added, err)
	}
}

func TestIgnored(t *testing.T) {
	twoQuestions := dnsmessage.Message{
		Header: okResponse,
		Questions: []dnsmessage.Question{
			{Name: name("a.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
			{Name: name("b.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
		},
		Answers: []dnsmessage.Resource{a("a.example.", 300, "192.0.2.1")},
	}
	noQuestion := twoQuestions
	noQuestion.Questions = nil
	chaos := twoQuestions
	chaos.Questions = []dnsmessage.Question{{Name: name("a.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassCHAOS}}
	otherClass := a("a.example.", 300, "192.0.2.1")
	otherClass.Header.Class = dnsmessage.ClassCHAOS
	notify := okResponse
	notify.OpCode = 4
	for name, m := range map[string]dnsmessage.Message{
		"two questions":     twoQuestions,
		"no question":       noQuestion,
		"CHAOS question":    chaos,
		"CHAOS answer":      {Header: okResponse, Questions: twoQuestions.Questions[:1], Answers: []dnsmessage.Resource{otherClass}},
		"opcode NOTIFY":     {Header: notify, Questions: twoQuestions.Questions[:1], Answers: twoQuestions.Answers},
		"unprintable label": {Header: okResponse, Questions: []dnsmessage.Question{{Name: name("a\nb."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}, Answers: []dnsmessage.Resource{a("a\nb.", 300, "192.0.2.1")}},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			dm := NewMap(Config{})
			if added, err := dm.ObserveUDP(1, b, t0); added != 0 || err != nil || dm.Len() != 0 {
				t.Errorf("added %d, %v, Len %d; want nothing", added, err, dm.Len())
			}
		})
	}
}

func TestLookupAllocs(t *testing.T) {
	m := NewMap(Config{})
	m.ObserveUDP(1, msg(t, okResponse, "example.com.", a("example.com.", 300, "192.0.2.1")), t0)
	hit, miss := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if n := testing.AllocsPerRun(1000, func() {
		m.Lookup(1, hit, t0)
		m.Lookup(1, miss, t0)
	}); n != 0 {
		t.Errorf("%v allocations per lookup, want 0", n)
	}
}

func TestLookupInvalid(t *testing.T) {
	m := NewMap(Config{})
	m.ObserveUDP(1, msg(t, okResponse, "example.com.", aaaa("example.com.", 300, "::")), t0)
	if name, ok := m.Lookup(1, netip.Addr{}, t0); ok {
		t.Errorf("the zero Addr found %q", name)
	}
}

// TestStatsConcurrent: metrics read Len and Stats while the pipeline
// observes and looks up. Run with -race.
func TestStatsConcurrent(t *testing.T) {
	m := NewMap(Config{MaxEntries: 16})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			_ = m.Stats()
			_ = m.Len()
		}
	}()
	b := typical(t)
	for i := range 1000 {
		m.ObserveUDP(uint32(i), b, t0)
		m.Lookup(uint32(i), netip.MustParseAddr("192.0.2.10"), t0)
	}
	<-done
	if s := m.Stats(); s.Responses != 1000 || m.Len() != 16 {
		t.Errorf("Len %d, stats %+v", m.Len(), s)
	}
}

func TestConfigDefaults(t *testing.T) {
	m := NewMap(Config{MinTTL: time.Hour, MaxTTL: time.Minute})
	if m.cfg.MaxEntries != 65536 || m.cfg.MinTTL != time.Hour || m.cfg.MaxTTL != time.Hour {
		t.Errorf("config %+v", m.cfg)
	}
}

// typical is a response as a recursive resolver gives it: a CNAME to a CDN
// and two addresses there.
func typical(tb testing.TB) []byte {
	return msg(tb, okResponse, "api.example.com.",
		cname("api.example.com.", 300, "api.example.com.edgekey.net."),
		a("api.example.com.edgekey.net.", 20, "192.0.2.10"),
		a("api.example.com.edgekey.net.", 20, "192.0.2.11"))
}

func BenchmarkObserveUDP(b *testing.B) {
	m := NewMap(Config{})
	msg := typical(b)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := m.ObserveUDP(1, msg, t0); n != 2 || err != nil {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkLookupHit(b *testing.B) {
	m := NewMap(Config{})
	m.ObserveUDP(1, typical(b), t0)
	addr := netip.MustParseAddr("192.0.2.11")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := m.Lookup(1, addr, t0); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkObserveWorst is a message built to cost the most: the most
// answers looked at, each a CNAME between long names that differ only at
// their end, chained backwards so that each pass of the chase reaches one
// more, and a tail of records past the cap.
func BenchmarkObserveWorst(b *testing.B) {
	long := func(i int) string {
		return fmt.Sprintf("%s.%s.%s.%s%04d.", strings.Repeat("a", 63), strings.Repeat("b", 63), strings.Repeat("c", 63), strings.Repeat("d", 55), i)
	}
	var answers []dnsmessage.Resource
	for i := maxAnswers - 2; i >= 0; i-- {
		answers = append(answers, cname(long(i), 300, long(i+1)))
	}
	answers = append(answers, a(long(maxAnswers-1), 300, "192.0.2.1"))
	for range 1000 {
		answers = append(answers, a("x.", 300, "192.0.2.2"))
	}
	msg := msg(b, okResponse, long(0), answers...)
	m := NewMap(Config{})
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := m.ObserveUDP(1, msg, t0); n != 1 || err != nil {
			b.Fatal(n, err)
		}
	}
}
