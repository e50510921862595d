// The load: the servers the workers call, and the worker processes.

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// servers are what the workers call: a listener that accepts and closes,
// a port where nothing listens, a TLS server and a DNS server.
type servers struct {
	plain, refused, tls netip.AddrPort
}

func startServers(ctx context.Context) (*servers, error) {
	var s servers
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.plain = plain.Addr().(*net.TCPAddr).AddrPort()
	go acceptLoop(plain, func(c net.Conn) { c.Close() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.refused = closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()

	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	tl, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, err
	}
	s.tls = tl.Addr().(*net.TCPAddr).AddrPort()
	go acceptLoop(tl, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.(*tls.Conn).Handshake()
	})

	pc, err := net.ListenPacket("udp", net.JoinHostPort(dnsServer, "53"))
	if err != nil {
		return nil, fmt.Errorf("dns server: %w", err)
	}
	go func() {
		<-ctx.Done()
		pc.Close()
	}()
	go serveDNS(pc, s.plain.Addr())
	return &s, nil
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: soakName},
		DNSNames: []string{soakName}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// serveDNS answers every A query with addr.
func serveDNS(pc net.PacketConn, addr netip.Addr) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		if q.Type == dnsmessage.TypeA {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: addr.As4()})
		}
		if resp, err := b.Finish(); err == nil {
			pc.WriteTo(resp, from)
		}
	}
}

// made counts what the workers did that the agent must report.
type made struct {
	connects, hellos uint64
}

func (m made) String() string { return fmt.Sprintf("%d connects, %d TLS hellos", m.connects, m.hellos) }

type workerSet struct {
	kinds []string
	cmds  []*exec.Cmd
	ins   []io.WriteCloser
	outs  []*strings.Builder
}

// startWorkers starts one process per kind of load in cg.
func startWorkers(cfg config, cg *cgroup, s *servers) (*workerSet, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	kinds := []struct {
		kind string
		rate int
	}{
		{"plain", cfg.rate}, {"refused", max(cfg.rate/5, 1)}, {"tls", max(cfg.rate/5, 1)},
		{"dns", max(cfg.rate/5, 1)}, {"spawn", max(cfg.rate/20, 1)},
	}
	ws := &workerSet{}
	for _, k := range kinds {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), workerEnv+"="+k.kind, "CALLSCOPE_SOAK_RATE="+strconv.Itoa(k.rate),
			"CALLSCOPE_SOAK_PLAIN="+s.plain.String(), "CALLSCOPE_SOAK_REFUSED="+s.refused.String(),
			"CALLSCOPE_SOAK_TLS="+s.tls.String())
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.dir.Fd())}
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out := &strings.Builder{}
		cmd.Stdout = out
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s worker: %w", k.kind, err)
		}
		ws.kinds, ws.cmds, ws.ins, ws.outs = append(ws.kinds, k.kind), append(ws.cmds, cmd), append(ws.ins, in), append(ws.outs, out)
	}
	return ws, nil
}

// stop tells the workers to stop, and adds up what they made.
func (ws *workerSet) stop() (made, error) {
	for _, in := range ws.ins {
		in.Close()
	}
	var m made
	for i, cmd := range ws.cmds {
		if err := cmd.Wait(); err != nil {
			return m, fmt.Errorf("%s worker: %w", ws.kinds[i], err)
		}
		var c, h uint64
		if _, err := fmt.Sscanf(ws.outs[i].String(), "connects %d hellos %d", &c, &h); err != nil {
			return m, fmt.Errorf("worker said %q: %w", ws.outs[i].String(), err)
		}
		m.connects += c
		m.hellos += h
	}
	ws.cmds = nil
	return m, nil
}

func (ws *workerSet) kill() {
	for _, cmd := range ws.cmds {
		cmd.Process.Kill()
	}
}

// worker makes one kind of call at a steady rate until its stdin is
// closed, then prints what it made.
func worker(kind string) error {
	plain := os.Getenv("CALLSCOPE_SOAK_PLAIN")
	if kind == "once" {
		c, err := net.DialTimeout("tcp", plain, 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
	rate, _ := strconv.Atoi(os.Getenv("CALLSCOPE_SOAK_RATE"))
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", net.JoinHostPort(dnsServer, "53"))
	}}
	var connects, hellos uint64
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			fmt.Printf("connects %d hellos %d\n", connects, hellos)
			return nil
		case <-tick.C:
		}
		switch kind {
		case "plain":
			c, err := net.DialTimeout("tcp", plain, 5*time.Second)
			if err != nil {
				return err
			}
			c.Close()
		case "refused":
			if _, err := net.DialTimeout("tcp", os.Getenv("CALLSCOPE_SOAK_REFUSED"), 5*time.Second); !errors.Is(err, unix.ECONNREFUSED) {
				return fmt.Errorf("refused connect: %v", err)
			}
		case "tls":
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", os.Getenv("CALLSCOPE_SOAK_TLS"),
				&tls.Config{ServerName: soakName, InsecureSkipVerify: true})
			if err != nil {
				return err
			}
			c.Close()
			hellos++
		case "dns":
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := res.LookupNetIP(ctx, "ip4", soakName)
			cancel()
			if err != nil || len(addrs) == 0 {
				return fmt.Errorf("lookup %s: %v", soakName, err)
			}
			_, port, _ := net.SplitHostPort(plain)
			c, err := net.DialTimeout("tcp", net.JoinHostPort(addrs[0].String(), port), 5*time.Second)
			if err != nil {
				return err
			}
			c.Close()
		case "spawn":
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), workerEnv+"=once")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("short-lived process: %v: %s", err, out)
			}
		default:
			return fmt.Errorf("unknown worker %q", kind)
		}
		connects++
	}
}
