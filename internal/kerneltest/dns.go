package kerneltest

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSServer answers A and AAAA queries over UDP and TCP from a fixed
// table, on port 53 of a loopback address, where the kernel capture looks
// for answers.
type DNSServer struct {
	Addr netip.AddrPort
}

// NewDNSServer serves names (lowercase, without the trailing dot) on
// ip:53 until the test ends.
func NewDNSServer(t testing.TB, ip string, names map[string]netip.Addr) *DNSServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "53"))
	if err != nil {
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp, err := answer(buf[:n], names); err == nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "53"))
	if err != nil {
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveTCP(conn, names)
		}
	}()
	return &DNSServer{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// serveTCP answers the length-prefixed queries of one TCP connection.
func serveTCP(conn net.Conn, names map[string]netip.Addr) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var n [2]byte
	for {
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return
		}
		query := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, query); err != nil {
			return
		}
		resp, err := answer(query, names)
		if err != nil {
			return
		}
		if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
			return
		}
	}
}

func answer(query []byte, names map[string]netip.Addr) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	addr, ok := names[strings.TrimSuffix(strings.ToLower(q.Name.String()), ".")]
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
	switch {
	case ok && q.Type == dnsmessage.TypeA && addr.Is4():
		b.AResource(rh, dnsmessage.AResource{A: addr.As4()})
	case ok && q.Type == dnsmessage.TypeAAAA && addr.Is6():
		b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: addr.As16()})
	}
	return b.Finish()
}

// Resolve describes a helper process that resolves Name through Server,
// as a program's resolver would, and connects to the first answer on Port.
type Resolve struct {
	Server netip.AddrPort
	// Network is how the resolver reaches Server: "udp" (the default) or
	// "tcp".
	Network string
	Name    string
	Port    uint16
	// TLS has the helper complete a TLS handshake on the connection, with
	// Name as the server name.
	TLS    bool
	Cgroup *Cgroup
	// NetNS is a network namespace to run in (a path under /var/run/netns).
	NetNS string
}

// Run runs the helper and returns its pid once it is done.
func (r Resolve) Run(t testing.TB) int {
	t.Helper()
	return runHelper(t, "resolve", r.Cgroup, r.NetNS,
		"CALLSCOPE_TEST_DNS="+r.Server.String(),
		"CALLSCOPE_TEST_DNS_NETWORK="+cmp.Or(r.Network, "udp"),
		"CALLSCOPE_TEST_NAME="+r.Name,
		fmt.Sprintf("CALLSCOPE_TEST_PORT=%d", r.Port),
		fmt.Sprintf("CALLSCOPE_TEST_TLS=%t", r.TLS))
}

func resolveMain() error {
	server, network := os.Getenv("CALLSCOPE_TEST_DNS"), os.Getenv("CALLSCOPE_TEST_DNS_NETWORK")
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := res.LookupNetIP(ctx, "ip4", os.Getenv("CALLSCOPE_TEST_NAME"))
	if err != nil {
		return err
	}
	if len(addrs) == 0 {
		return errors.New("no address")
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addrs[0].String(), os.Getenv("CALLSCOPE_TEST_PORT")), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if os.Getenv("CALLSCOPE_TEST_TLS") != "true" {
		return nil
	}
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: os.Getenv("CALLSCOPE_TEST_NAME")})
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return tc.Close()
}
