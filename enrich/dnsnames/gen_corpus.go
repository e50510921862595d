//go:build ignore

// gen_corpus writes the seed corpora of FuzzObserveUDP and FuzzObserveTCP
// under testdata/fuzz: responses shaped as resolvers send them, hostile
// messages, and the messages of a real exchange between Go's stub resolver
// and a small server on 127.0.0.1. With -resolver it also keeps what a
// real resolver answers.
//
//	go run gen_corpus.go [-resolver 10.0.0.53:53]
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func main() {
	resolver := flag.String("resolver", "", "also query this DNS server (host:port) and keep its answers")
	flag.Parse()

	udp, tcp := map[string][]byte{}, map[string][]byte{}
	shaped(udp, tcp)
	hostile(udp, tcp)
	if err := stub(udp, tcp); err != nil {
		log.Fatalf("stub exchange: %v", err)
	}
	if *resolver != "" {
		if err := resolverAnswers(udp, *resolver); err != nil {
			log.Fatalf("resolver %s: %v", *resolver, err)
		}
	}
	write("FuzzObserveUDP", udp)
	write("FuzzObserveTCP", tcp)
}

func write(fuzzer string, corpus map[string][]byte) {
	dir := filepath.Join("testdata", "fuzz", fuzzer)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	for name, b := range corpus {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("%s: %d seeds", fuzzer, len(corpus))
}

var ok = dnsmessage.Header{ID: 0xbeef, Response: true, RecursionDesired: true, RecursionAvailable: true}

func rr(owner string, ttl uint32, body dnsmessage.ResourceBody) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(owner), Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   body,
	}
}

func a(owner string, ttl uint32, addr string) dnsmessage.Resource {
	return rr(owner, ttl, &dnsmessage.AResource{A: netip.MustParseAddr(addr).As4()})
}

func aaaa(owner string, ttl uint32, addr string) dnsmessage.Resource {
	return rr(owner, ttl, &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(addr).As16()})
}

func cname(owner string, ttl uint32, target string) dnsmessage.Resource {
	return rr(owner, ttl, &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(target)})
}

func opt() dnsmessage.Resource {
	var h dnsmessage.ResourceHeader
	if err := h.SetEDNS0(1232, dnsmessage.RCodeSuccess, false); err != nil {
		log.Fatal(err)
	}
	return dnsmessage.Resource{Header: h, Body: &dnsmessage.OPTResource{}}
}

func pack(h dnsmessage.Header, q string, qtype dnsmessage.Type, answers []dnsmessage.Resource, extra ...dnsmessage.Resource) []byte {
	m := dnsmessage.Message{
		Header:      h,
		Questions:   []dnsmessage.Question{{Name: dnsmessage.MustNewName(q), Type: qtype, Class: dnsmessage.ClassINET}},
		Answers:     answers,
		Additionals: extra,
	}
	b, err := m.Pack()
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func frame(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

// shaped adds messages as resolvers send them.
func shaped(udp, tcp map[string][]byte) {
	A, AAAA := dnsmessage.TypeA, dnsmessage.TypeAAAA
	udp["a"] = pack(ok, "example.com.", A, []dnsmessage.Resource{a("example.com.", 300, "93.184.215.14")}, opt())
	udp["aaaa"] = pack(ok, "example.com.", AAAA, []dnsmessage.Resource{aaaa("example.com.", 300, "2606:2800:21f:cb07:6820:80da:af6b:8b2c")}, opt())
	udp["cname-chain"] = pack(ok, "www.example.com.", A, []dnsmessage.Resource{
		cname("www.example.com.", 300, "www.example.com.edgekey.net."),
		cname("www.example.com.edgekey.net.", 300, "e1234.a.akamaiedge.net."),
		a("e1234.a.akamaiedge.net.", 20, "192.0.2.10"),
		a("e1234.a.akamaiedge.net.", 20, "192.0.2.11"),
	}, opt())
	udp["cname-reversed"] = pack(ok, "www.example.com.", AAAA, []dnsmessage.Resource{
		aaaa("e1.cdn.net.", 20, "2001:db8::1"),
		cname("www.example.com.", 300, "e1.cdn.net."),
	})
	udp["unchained"] = pack(ok, "www.example.com.", A, []dnsmessage.Resource{
		a("www.example.com.", 300, "192.0.2.1"),
		a("bank.example.", 300, "192.0.2.2"),
		cname("other.example.", 300, "x.example."),
		a("x.example.", 300, "192.0.2.3"),
	})
	udp["cname-loop"] = pack(ok, "a.example.", A, []dnsmessage.Resource{
		cname("a.example.", 300, "b.example."), cname("b.example.", 300, "a.example."), a("b.example.", 300, "192.0.2.9"),
	})
	udp["mixed-case"] = pack(ok, "wWw.ExAmPlE.cOm.", A, []dnsmessage.Resource{a("WwW.eXaMpLe.CoM.", 0, "192.0.2.1")})
	udp["mapped"] = pack(ok, "v4.example.", AAAA, []dnsmessage.Resource{aaaa("v4.example.", 60, "::ffff:192.0.2.1")})
	udp["ttl-top-bit"] = pack(ok, "example.com.", A, []dnsmessage.Resource{a("example.com.", 1<<31|5, "192.0.2.1")})
	udp["blocked"] = pack(ok, "ads.example.", A, []dnsmessage.Resource{a("ads.example.", 300, "0.0.0.0")})
	nx := ok
	nx.RCode = dnsmessage.RCodeNameError
	udp["nxdomain"] = pack(nx, "nope.example.", A, nil, opt())
	q := dnsmessage.Header{ID: 0xbeef, RecursionDesired: true}
	udp["query"] = pack(q, "example.com.", A, nil, opt())
	tc := ok
	tc.Truncated = true
	udp["tc"] = pack(tc, "big.example.", A, nil)
	nodata := dnsmessage.Message{
		Header:    ok,
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("example.com."), Type: AAAA, Class: dnsmessage.ClassINET}},
		Authorities: []dnsmessage.Resource{rr("example.com.", 3600, &dnsmessage.SOAResource{
			NS: dnsmessage.MustNewName("ns.example.com."), MBox: dnsmessage.MustNewName("hostmaster.example.com."),
			Serial: 1, Refresh: 7200, Retry: 3600, Expire: 1209600, MinTTL: 3600,
		})},
	}
	b, err := nodata.Pack()
	if err != nil {
		log.Fatal(err)
	}
	udp["nodata-soa"] = b
	udp["other-types"] = pack(ok, "example.com.", dnsmessage.TypeMX, []dnsmessage.Resource{
		rr("example.com.", 300, &dnsmessage.MXResource{Pref: 10, MX: dnsmessage.MustNewName("mail.example.com.")}),
		rr("example.com.", 300, &dnsmessage.TXTResource{TXT: []string{"v=spf1 -all"}}),
		a("example.com.", 300, "192.0.2.1"),
	})
	var many []dnsmessage.Resource
	for i := range 70 {
		many = append(many, a("many.example.", 60, fmt.Sprintf("10.0.0.%d", i)))
	}
	udp["cap"] = pack(ok, "many.example.", A, many)

	one := udp["a"]
	two := udp["cname-chain"]
	tcp["one"] = frame(one)
	tcp["two"] = frame(one, two)
	tcp["two-cut"] = frame(one, two)[:len(one)+2+len(two)/2]
	tcp["prefix-cut"] = frame(one)[:1]
	tcp["prefix-only"] = frame(one)[:2]
	tcp["cap"] = frame(udp["cap"])
}

// hostile adds messages that lie.
func hostile(udp, tcp map[string][]byte) {
	hdr := func(qd, an uint16) []byte {
		return []byte{0xbe, 0xef, 0x81, 0x80, byte(qd >> 8), byte(qd), byte(an >> 8), byte(an), 0, 0, 0, 0}
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
	good := cat(hdr(1, 1), question, answerA(4, 192, 0, 2, 1))
	udp["hand-built"] = good
	udp["empty"] = []byte{}
	udp["header-only"] = hdr(0, 0)
	udp["cut-question"] = good[:20]
	udp["cut-answer"] = good[:len(good)-2]
	udp["ancount-lies"] = cat(hdr(1, 0xffff), question, answerA(4, 192, 0, 2, 1))
	udp["qdcount-lies"] = cat(hdr(0xffff, 1), question, answerA(4, 192, 0, 2, 1))
	udp["rdlength-short"] = cat(hdr(1, 1), question, answerA(2, 192, 0), answerA(4, 192, 0, 2, 1))
	udp["rdlength-long"] = cat(hdr(1, 1), question, answerA(0xff, 192, 0, 2, 1))
	udp["pointer-self"] = cat(hdr(1, 0), []byte{0xc0, 12, 0, 1, 0, 1})
	udp["pointer-loop"] = cat(hdr(1, 1), question, []byte{0xc0, 31, 0xc0, 29, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1})
	udp["pointer-forward"] = cat(hdr(1, 1), []byte{0xc0, 18, 0, 1, 0, 1}, []byte{3, 'f', 'o', 'o', 0, 0}, answerA(4, 192, 0, 2, 1))
	udp["pointer-past-end"] = cat(hdr(1, 1), question, []byte{0xc0, 0xff, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1})
	udp["reserved-label"] = cat(hdr(1, 0), []byte{0x40, 'a', 0, 0, 1, 0, 1})
	// A CNAME whose target points back into its own owner.
	udp["cname-pointer"] = cat(hdr(1, 2), question,
		[]byte{0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12},
		answerA(4, 192, 0, 2, 1))
	long := make([]byte, 0, 300)
	for range 5 {
		long = append(long, 63)
		long = append(long, strings.Repeat("a", 63)...)
	}
	udp["name-too-long"] = cat(hdr(1, 0), long, []byte{0, 0, 1, 0, 1})
	udp["label-dot"] = cat(hdr(1, 1), []byte{3, 'a', '.', 'b', 0, 0, 1, 0, 1}, answerA(4, 192, 0, 2, 1))
	udp["label-control"] = cat(hdr(1, 1), []byte{3, 'a', '\n', 'b', 0, 0, 1, 0, 1}, answerA(4, 192, 0, 2, 1))

	tcp["zero-lengths"] = make([]byte, 64)
	tcp["length-lies"] = cat([]byte{0xff, 0xff}, good)
	tcp["garbage-then-good"] = cat(frame([]byte{1, 2, 3}), frame(good))
}

// stub has Go's resolver look names up from a server on 127.0.0.1, over
// UDP and, for an answer too big for it, over TCP, and keeps the messages
// as they crossed the wire.
func stub(udp, tcp map[string][]byte) error {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		return err
	}
	defer ln.Close()

	var mu sync.Mutex
	keep := func(corpus map[string][]byte, kind string, q dnsmessage.Question, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		corpus[fmt.Sprintf("stub-%s-%s-%s", strings.TrimSuffix(q.Name.String(), "."), strings.TrimPrefix(q.Type.String(), "Type"), kind)] = b
	}

	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q, resp := answer(buf[:n], false)
			keep(udp, "query", q, append([]byte(nil), buf[:n]...))
			keep(udp, "response", q, resp)
			pc.WriteTo(resp, from)
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var stream []byte
				for {
					var l [2]byte
					if _, err := io.ReadFull(c, l[:]); err != nil {
						break
					}
					query := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, query); err != nil {
						break
					}
					q, resp := answer(query, true)
					stream = append(stream, frame(resp)...)
					keep(tcp, "stream", q, stream)
					c.Write(frame(resp))
				}
			}()
		}
	}()

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, pc.LocalAddr().String())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, host := range []string{"www.example.com", "api.example.com", "big.example.com"} {
		if _, err := r.LookupNetIP(ctx, "ip", host); err != nil {
			return fmt.Errorf("look up %s: %w", host, err)
		}
	}
	if _, err := r.LookupNetIP(ctx, "ip", "missing.example.com"); err == nil {
		return errors.New("missing.example.com resolved")
	}
	return nil
}

// answer is the stub server: a CNAME to a CDN for www, addresses for api,
// 40 addresses for big (too many for UDP, so truncated there), NXDOMAIN
// for the rest. It answers in the question's case and with EDNS when
// asked, as resolvers do.
func answer(query []byte, overTCP bool) (dnsmessage.Question, []byte) {
	var m dnsmessage.Message
	if err := m.Unpack(query); err != nil || len(m.Questions) != 1 {
		log.Fatalf("stub server: bad query: %v", err)
	}
	q := m.Questions[0]
	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: m.Header.ID, Response: true, RecursionDesired: m.Header.RecursionDesired, RecursionAvailable: true},
		Questions: m.Questions,
	}
	if len(m.Additionals) > 0 {
		resp.Additionals = []dnsmessage.Resource{opt()}
	}
	v6 := q.Type == dnsmessage.TypeAAAA
	addr := func(owner string, ttl uint32, n int) dnsmessage.Resource {
		if v6 {
			return aaaa(owner, ttl, fmt.Sprintf("2001:db8::%x", n))
		}
		return a(owner, ttl, fmt.Sprintf("192.0.2.%d", n))
	}
	switch strings.ToLower(q.Name.String()) {
	case "www.example.com.":
		resp.Answers = []dnsmessage.Resource{
			cname(q.Name.String(), 300, "www.example.com.edgekey.net."),
			cname("www.example.com.edgekey.net.", 21600, "e1234.a.akamaiedge.net."),
			addr("e1234.a.akamaiedge.net.", 20, 10),
			addr("e1234.a.akamaiedge.net.", 20, 11),
		}
	case "api.example.com.":
		resp.Answers = []dnsmessage.Resource{addr(q.Name.String(), 60, 20), addr(q.Name.String(), 60, 21)}
	case "big.example.com.":
		if !overTCP {
			resp.Header.Truncated = true
			break
		}
		for i := range 40 {
			resp.Answers = append(resp.Answers, addr(q.Name.String(), 30, 100+i))
		}
	default:
		resp.Header.RCode = dnsmessage.RCodeNameError
	}
	b, err := resp.Pack()
	if err != nil {
		log.Fatal(err)
	}
	return q, b
}

// resolverAnswers keeps what a real resolver answers to A and AAAA queries.
func resolverAnswers(udp map[string][]byte, server string) error {
	for _, host := range []string{"www.example.com.", "localhost."} {
		for _, t := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
			q := pack(dnsmessage.Header{ID: 0x4242, RecursionDesired: true}, host, t, nil, opt())
			c, err := net.Dial("udp", server)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write(q); err != nil {
				c.Close()
				return err
			}
			buf := make([]byte, 65535)
			n, err := c.Read(buf)
			c.Close()
			if err != nil {
				return err
			}
			udp[fmt.Sprintf("real-%s-%s", strings.TrimSuffix(host, "."), strings.TrimPrefix(t.String(), "Type"))] = buf[:n]
		}
	}
	return nil
}
