package collector_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/internal/kerneltest"
)

// tlsOf returns the connect and tls events of pid once both are in.
func (s *sink) connectAndTLS(t *testing.T, pid int) (connect, hello collector.Event) {
	t.Helper()
	evs := s.await(t, 2, 5*time.Second, pid)
	for _, e := range evs {
		switch e.Kind {
		case collector.KindConnect:
			connect = e
		case collector.KindTLS:
			hello = e
		}
	}
	if connect.Kind == 0 || hello.Kind == 0 {
		t.Fatalf("want a connect and a tls event from pid %d, got %+v", pid, evs)
	}
	if hello.Cookie != connect.Cookie || hello.Src != connect.Src || hello.Dst != connect.Dst ||
		hello.PID != connect.PID || hello.CgroupID != connect.CgroupID || hello.ProcStart != connect.ProcStart || hello.NetNS != connect.NetNS {
		t.Errorf("tls event does not match its connect:\n connect %+v\n tls     %+v", connect, hello)
	}
	if hello.Hello == nil {
		t.Fatalf("tls event without a ClientHello: %+v", hello)
	}
	return connect, hello
}

func TestTLSClientHello(t *testing.T) {
	_, s := start(t)
	cg := kerneltest.NewCgroup(t, "tls")
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		srv := kerneltest.NewTLSServer(t, addr)
		opensslAddr := srv.Addr.String()

		type want struct {
			sni  string
			alpn []string
			pq   bool
		}
		for _, c := range []struct {
			name string
			run  func() int
			want want
		}{
			{"go", func() int {
				return kerneltest.TLSClient{Addr: srv.Addr, ServerName: "api.example.test", ALPN: []string{"h2", "http/1.1"}, Cgroup: cg}.Run(t)
			}, want{sni: "api.example.test", alpn: []string{"h2", "http/1.1"}, pq: true}},
			{"go/segments", func() int {
				// Small segments: the post-quantum hello spans several.
				return kerneltest.TLSClient{Addr: srv.Addr, ServerName: "segments.example.test", MSS: 536, Cgroup: cg}.Run(t)
			}, want{sni: "segments.example.test", pq: true}},
			{"openssl", func() int {
				return run(t, cg, "openssl", "s_client", "-connect", opensslAddr, "-servername", "ssl.example.test", "-alpn", "h2,http/1.1")
			}, want{sni: "ssl.example.test", alpn: []string{"h2", "http/1.1"}}},
			{"openssl/no-sni", func() int {
				return run(t, cg, "openssl", "s_client", "-connect", opensslAddr, "-noservername")
			}, want{}},
			{"curl", func() int {
				return run(t, cg, "curl", "-sSk", "--http2", "--resolve", fmt.Sprintf("web.example.test:%d:%s", srv.Addr.Port(), srv.Addr.Addr()),
					fmt.Sprintf("https://web.example.test:%d/", srv.Addr.Port()))
			}, want{sni: "web.example.test", alpn: []string{"h2", "http/1.1"}}},
		} {
			t.Run(strings.Trim(addr, "[]:0")+"/"+c.name, func(t *testing.T) {
				pid := c.run()
				_, ev := s.connectAndTLS(t, pid)
				h := ev.Hello
				if h.SNI != c.want.sni {
					t.Errorf("SNI %q, want %q", h.SNI, c.want.sni)
				}
				if c.want.alpn != nil && !slices.Equal(h.ALPN, c.want.alpn) {
					t.Errorf("ALPN %q, want %q", h.ALPN, c.want.alpn)
				}
				if len(h.Versions) == 0 || h.Versions[0] != 0x0304 || !slices.Contains(h.Versions, 0x0303) {
					t.Errorf("versions %#x, want TLS 1.3 first and 1.2", h.Versions)
				}
				if h.PostQuantum != c.want.pq {
					t.Errorf("post-quantum %v, want %v", h.PostQuantum, c.want.pq)
				}
				if h.Truncated {
					t.Errorf("hello reported truncated")
				}
				if h.CipherSuites == 0 || h.JA4 == "" {
					t.Errorf("cipher suites %d, JA4 %q: want both", h.CipherSuites, h.JA4)
				}
				if ev.ServerHello == nil || ev.ServerHello.Version != 0x0304 {
					t.Errorf("server hello %+v, want TLS 1.3", ev.ServerHello)
				}
				select {
				case sni := <-srv.Hellos:
					if sni != c.want.sni {
						t.Errorf("the server read SNI %q, the capture %q", sni, h.SNI)
					}
				case <-time.After(time.Second):
					t.Errorf("the server saw no ClientHello")
				}
			})
		}
	}
	if st := collectorStats(t, s); st.Unparsable != 0 || st.Dropped != 0 {
		t.Errorf("hello stats %+v: want nothing unparsable or dropped", st)
	}
}

// TestPlainConnectHasNoTLS: a connection whose first bytes are not a TLS
// handshake gets no tls event.
func TestPlainConnectHasNoTLS(t *testing.T) {
	_, s := start(t)
	addr, _ := listen(t, "tcp", "127.0.0.1:0")
	cg := kerneltest.NewCgroup(t, "plain")
	pid := run(t, cg, "curl", "-s", "-o", "/dev/null", "--max-time", "2", fmt.Sprintf("http://%s/", addr))
	evs := s.await(t, 1, 5*time.Second, pid)
	if evs[0].Kind != collector.KindConnect {
		t.Errorf("got %+v, want one connect", evs[0])
	}
}

// TestFirstData: an established connect to a port where TLS is expected
// waits for its first data; it carries Plaintext when that was no TLS
// handshake, and goes without, at once, when it was one. A connect that
// sends nothing goes once the wait is over, and one to another port does
// not wait.
func TestFirstData(t *testing.T) {
	kerneltest.Require(t)
	srv := kerneltest.NewTLSServer(t, "127.0.0.1:0")
	plain, _ := listen(t, "tcp4", "127.0.0.1:0")
	other, _ := listen(t, "tcp4", "127.0.0.1:0")
	c, s := startWith(t, collector.Config{FlushInterval: 10 * time.Millisecond, TLSPorts: []uint16{srv.Addr.Port(), plain.Port()}}, 0)
	cg := kerneltest.NewCgroup(t, "first-data")

	pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{plain}, Cgroup: cg, Send: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"}.Run(t)
	if e := s.await(t, 1, 5*time.Second, pid)[0]; e.Outcome != collector.OutcomeEstablished || !e.Plaintext {
		t.Errorf("HTTP to a TLS port: %+v, want established and plaintext", e)
	}

	pid = kerneltest.TLSClient{Addr: srv.Addr, ServerName: "first.example.test", Cgroup: cg}.Run(t)
	connect, hello := s.connectAndTLS(t, pid)
	if connect.Plaintext || hello.Plaintext {
		t.Errorf("a TLS handshake was taken for plaintext: %+v", connect)
	}

	start := time.Now()
	pid, _ = kerneltest.Connect{Addrs: []netip.AddrPort{plain}, Cgroup: cg}.Run(t)
	if e := s.await(t, 1, 5*time.Second, pid)[0]; e.Plaintext {
		t.Errorf("a connect that sent nothing: %+v", e)
	}
	t.Logf("a silent connect to a TLS port came after %v", time.Since(start))

	pid, _ = kerneltest.Connect{Addrs: []netip.AddrPort{other}, Cgroup: cg, Send: "hello"}.Run(t)
	if e := s.await(t, 1, 5*time.Second, pid)[0]; e.Plaintext {
		t.Errorf("plaintext to a port where TLS is not expected: %+v", e)
	}
	if st := c.Stats(); st.HeldFull != 0 || st.PlaintextLost != 0 {
		t.Errorf("held full %d, plaintext lost %d", st.HeldFull, st.PlaintextLost)
	}
}

func collectorStats(t *testing.T, s *sink) collector.HelloStats {
	t.Helper()
	if s.c == nil {
		t.Fatal("sink has no collector")
	}
	time.Sleep(100 * time.Millisecond) // a flush pass publishes the counts
	return s.c.Stats().Hellos
}

// run runs a command in cg and returns its pid once it exited; its
// failure (other than a refused HTTP request) fails the test.
func run(t *testing.T, cg *kerneltest.Cgroup, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, args...)
	kerneltest.InCgroup(cmd, cg)
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	if cmd.Process == nil || (err != nil && name != "curl") {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return cmd.Process.Pid
}

// TestDNSAnswers: a DNS answer received over UDP or TCP is handed on with
// its bytes and the network namespace of the socket that received it,
// this one's or a peer's.
func TestDNSAnswers(t *testing.T) {
	_, s := start(t)
	addr, _ := listen(t, "tcp", "127.0.0.1:0")
	dns := kerneltest.NewDNSServer(t, "127.0.77.53", map[string]netip.Addr{"answer.example.test": addr.Addr()})
	peer := kerneltest.NewPeer(t)
	// The peer asks this namespace's server across the veth.
	peerAddr, _ := listen(t, "tcp", netip.AddrPortFrom(peer.Local, 0).String())
	peerDNS := kerneltest.NewDNSServer(t, peer.Local.String(), map[string]netip.Addr{"answer.example.test": peerAddr.Addr()})
	for _, tc := range []struct {
		name, network, netns string
		server               netip.AddrPort
		port                 uint16
	}{
		{"udp", "udp", "", dns.Addr, addr.Port()},
		{"tcp", "tcp", "", dns.Addr, addr.Port()},
		{"udp in a peer namespace", "udp", peer.NetNS, peerDNS.Addr, peerAddr.Port()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := netnsInode(t, "/proc/self/ns/net")
			if tc.netns != "" {
				want = netnsInode(t, tc.netns)
			}
			cg := kerneltest.NewCgroup(t, "dns-"+tc.network)
			kerneltest.Resolve{Server: tc.server, Network: tc.network, Name: "answer.example.test", Port: tc.port, Cgroup: cg, NetNS: tc.netns}.Run(t)

			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				s.mu.Lock()
				for _, e := range s.dns {
					if e.Src.Port() == 53 && bytes.Contains(e.DNS, []byte("\x06answer\x07example\x04test\x00")) && e.CgroupID == cg.ID {
						if e.NetNS != want || e.DNSOverTCP != (tc.network == "tcp") {
							t.Errorf("answer from netns %d over TCP %v, want netns %d over %s", e.NetNS, e.DNSOverTCP, want, tc.network)
						}
						s.mu.Unlock()
						return
					}
				}
				s.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
			t.Fatalf("no DNS answer over %s in cgroup %d among %d", tc.network, cg.ID, len(s.dns))
		})
	}
}

// TestExec: execve is reported with the path as given, the arguments, the
// parent, and the start time that connects of the process will carry.
func TestExec(t *testing.T) {
	_, s := start(t)
	cg := kerneltest.NewCgroup(t, "exec")
	addr, _ := listen(t, "tcp", "127.0.0.1:0")
	pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{addr}, Cgroup: cg}.Run(t)
	connect := s.await(t, 1, 5*time.Second, pid)[0]

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.execs {
		if int(e.PID) != pid {
			continue
		}
		x := e.Exec
		if x == nil || x.Path != os.Args[0] || len(x.Args) != 2 || x.Args[0] != os.Args[0] || x.Args[1] != addr.String() || int(x.PPID) != os.Getpid() {
			t.Errorf("exec %+v, want %s %s from parent %d", x, os.Args[0], addr, os.Getpid())
		}
		if e.ProcStart != connect.ProcStart || e.CgroupID != cg.ID {
			t.Errorf("exec start %d cgroup %d; connect start %d, cgroup %d", e.ProcStart, e.CgroupID, connect.ProcStart, cg.ID)
		}
		return
	}
	t.Fatalf("no exec of pid %d among %d", pid, len(s.execs))
}
