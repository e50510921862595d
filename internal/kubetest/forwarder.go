package kubetest

import (
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"k8s.io/client-go/rest"
)

// Forwarder passes TCP connections on to the API server while it is up,
// so that a test can cut a client off the API server, as an outage would,
// and let it back in. While it is cut, connecting to it is refused.
type Forwarder struct {
	// URL is the forwarder's address, which the API server's certificate
	// names as it names its own (127.0.0.1).
	URL string

	addr, to string
	mu       sync.Mutex
	ln       net.Listener
	conns    []net.Conn
}

// Forward returns a forwarder to the API server, up or cut, which is cut
// when the test ends.
func (cp *ControlPlane) Forward(t testing.TB, up bool) *Forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f := &Forwarder{URL: "https://" + addr, addr: addr, to: cp.URL[len("https://"):]}
	if up {
		f.Up(t)
	}
	t.Cleanup(f.Cut)
	return f
}

// Up listens again, on the same address.
func (f *Forwarder) Up(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatalf("forwarder: %v", err)
	}
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", f.to)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
}

// Cut closes the listener and every connection through it.
func (f *Forwarder) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// ConfigFor is a client configuration that reaches the API server through
// the forwarder and authenticates with token.
func (f *Forwarder) ConfigFor(cp *ControlPlane, token string) *rest.Config {
	cfg := cp.ConfigFor(token)
	cfg.Host = f.URL
	return cfg
}

// Kubeconfig writes a kubeconfig that reaches the API server through the
// forwarder and authenticates with token into the test's temporary
// directory, and returns its path.
func (f *Forwarder) Kubeconfig(t testing.TB, cp *ControlPlane, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(path, f.URL, cp.CAData, token); err != nil {
		t.Fatal(err)
	}
	return path
}
