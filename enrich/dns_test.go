package enrich

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/callscope/callscope/collector"
)

// tcpAnswer is a length-prefixed DNS answer naming addr.
func tcpAnswer(t *testing.T, name string, addr netip.Addr) []byte {
	t.Helper()
	n := dnsmessage.MustNewName(name + ".")
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	b.StartAnswers()
	b.AResource(dnsmessage.ResourceHeader{Name: n, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: addr.As4()})
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// TestDNSOverTCPFirstSegmentOnly: of a TCP connection, only the first
// segment from the server names anything; a later one that happens to hold
// a whole answer (bytes chosen by whoever wrote the records) is not read.
func TestDNSOverTCPFirstSegmentOnly(t *testing.T) {
	e := newTestEnricher(t)
	now := time.Now()
	real, fake := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.6")
	dns := func(payload []byte) collector.Event {
		return collector.Event{Kind: collector.KindDNS, Cookie: 99, Time: now.UnixNano(), NetNS: 1, DNS: payload, DNSOverTCP: true}
	}
	out := e.EnrichBatch([]collector.Event{
		dns(tcpAnswer(t, "api.example.test", real)),
		dns(tcpAnswer(t, "allowed.example.test", fake)),
	}, nil, now)
	if len(out) != 0 {
		t.Errorf("DNS answers went on as events: %+v", out)
	}
	lookup := func(a netip.Addr) string {
		ev := collector.Event{Kind: collector.KindConnect, NetNS: 1, Time: now.UnixNano(), Dst: netip.AddrPortFrom(a, 443)}
		return e.dnsName(&ev)
	}
	if got := lookup(real); got != "api.example.test" {
		t.Errorf("first segment: %s named %q, want api.example.test", real, got)
	}
	if got := lookup(fake); got != "" {
		t.Errorf("a later segment named %s %q", fake, got)
	}
	if st := e.Stats(); st.DNSTCPSkipped != 1 {
		t.Errorf("skipped %d TCP segments, want 1", st.DNSTCPSkipped)
	}
}

// TestDNSWithoutNamespace: answers the kernel could not place in a network
// namespace (before Linux 6.3) name the connects of every namespace.
func TestDNSWithoutNamespace(t *testing.T) {
	e := newTestEnricher(t)
	now := time.Now()
	addr := netip.MustParseAddr("192.0.2.7")
	udp := tcpAnswer(t, "shared.example.test", addr)[2:]
	e.EnrichBatch([]collector.Event{{Kind: collector.KindDNS, Time: now.UnixNano(), DNS: udp}}, nil, now)
	ev := collector.Event{Kind: collector.KindConnect, NetNS: 4026531840, Time: now.UnixNano(), Dst: netip.AddrPortFrom(addr, 443)}
	if got := e.dnsName(&ev); got != "shared.example.test" {
		t.Errorf("named %q, want shared.example.test", got)
	}
}
