package metricsserver

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// forwarder passes TCP connections on to an address until it is cut,
// after which connections to it are refused.
type forwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func forward(t *testing.T, to string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
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
	t.Cleanup(f.cut)
	return f
}

func (f *forwarder) cut() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// TestAPIServerUnreachable cuts the agent off its API server between
// scrapes: every scrape it cannot check is refused, and only answers the
// API server gave before (kept for tokenCacheTTL and allowCacheTTL) still
// hold.
func TestAPIServerUnreachable(t *testing.T) {
	cp := controlPlane(t)
	fwd := forward(t, strings.TrimPrefix(cp.URL, "https://"))
	s := startServer(t, Config{Auth: AuthKubernetes, Kube: agentClient(t, cp, "https://"+fwd.ln.Addr().String())})
	ca := s.selfSignedCA

	cached := cp.Token(t, testNS, "scraper")
	if code, _ := get(t, s, ca, "/metrics", cached); code != http.StatusOK {
		t.Fatalf("scrape while the API server is reachable: %d, want 200", code)
	}
	// Tokens minted now, used only once the API server is gone: no answer
	// about them is cached.
	fresh := cp.Token(t, testNS, "scraper")
	stranger := cp.Token(t, testNS, "stranger")

	fwd.cut()

	for _, c := range []struct {
		name, token string
		want        int
	}{
		{"reader's new token", fresh, http.StatusUnauthorized},
		{"unbound token", stranger, http.StatusUnauthorized},
		{"no token", "", http.StatusUnauthorized},
		{"reader's token reviewed before", cached, http.StatusOK},
	} {
		code, body := get(t, s, ca, "/metrics", c.token)
		if code != c.want {
			t.Errorf("%s with the API server unreachable: %d %q, want %d", c.name, code, body, c.want)
		}
		if c.want != http.StatusOK && strings.Contains(body, "callscope_") {
			t.Errorf("%s with the API server unreachable: the page was served", c.name)
		}
	}
	if code, _ := get(t, s, ca, "/readyz", ""); code != http.StatusOK {
		t.Errorf("/readyz with the API server unreachable: %d, want 200", code)
	}
}

// TestAuthorizerUnreachable has TokenReview's answer cached and the
// SubjectAccessReview not: a token the API server accepted, on a path it
// was not asked about, gets 500, never the page.
func TestAuthorizerUnreachable(t *testing.T) {
	cp := controlPlane(t)
	fwd := forward(t, strings.TrimPrefix(cp.URL, "https://"))
	s := startServer(t, Config{
		Auth:      AuthKubernetes,
		Kube:      agentClient(t, cp, "https://"+fwd.ln.Addr().String()),
		Protected: map[string]http.Handler{"/metrics": testMetrics(), "/other": testMetrics()},
	})
	ca := s.selfSignedCA

	// The authoriser's answers are kept per user, verb and path: one for
	// /metrics says nothing of /other.
	token := cp.Token(t, testNS, "scraper")
	if code, _ := get(t, s, ca, "/metrics", token); code != http.StatusOK {
		t.Fatalf("scrape while the API server is reachable: %d, want 200", code)
	}
	fwd.cut()
	code, body := get(t, s, ca, "/other", token)
	if code != http.StatusInternalServerError || strings.Contains(body, "callscope_") {
		t.Errorf("a reviewed token on a path not asked about, with the API server unreachable: %d %q, want 500", code, body)
	}
}
