package metricsserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// peerChain does a TLS handshake with s, verifying nothing, and returns
// the chain it presents.
func peerChain(t *testing.T, s *Server) []*x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if st.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x, want 1.2 or later", st.Version)
	}
	if st.NegotiatedProtocol == "h2" {
		t.Error("HTTP/2 negotiated; the server offers HTTP/1.1 only")
	}
	return st.PeerCertificates
}

// TestSelfSignedChain checks that the certificate the server made verifies
// against its CA for the loopback names, and against nothing else.
func TestSelfSignedChain(t *testing.T) {
	cp := controlPlane(t)
	s := startServer(t, Config{Auth: AuthKubernetes, Kube: agentClient(t, cp, "")})
	if !s.TLS() || s.selfSignedCA == nil {
		t.Fatal("auth kubernetes without certificate files: want TLS with a self-signed certificate")
	}
	chain := peerChain(t, s)
	if len(chain) != 2 || !chain[1].Equal(s.selfSignedCA) {
		t.Fatalf("served chain of %d certificates, want the serving certificate and the CA made at start", len(chain))
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.selfSignedCA)
	host, _ := os.Hostname()
	for _, name := range []string{"localhost", "127.0.0.1", "::1", host} {
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
		t.Error("serving certificate verifies for example.com")
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: x509.NewCertPool(), DNSName: "localhost"}); err == nil {
		t.Error("serving certificate verifies without its CA")
	}
	// A client that verifies against the system's roots refuses it.
	if _, err := http.Get("https://" + s.Addr().String() + "/healthz"); err == nil {
		t.Error("GET with the system's roots succeeded against a self-signed certificate")
	}

	// Plain HTTP to the TLS port gets no page.
	resp, err := http.Get("http://" + s.Addr().String() + "/healthz")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port: %d %q, want 400", resp.StatusCode, b)
		}
	}
}

// TestAuthNoneIsPlainHTTP is the default outside Kubernetes.
func TestAuthNoneIsPlainHTTP(t *testing.T) {
	s := startServer(t, Config{Auth: AuthNone})
	if s.TLS() {
		t.Fatal("auth none without certificate files speaks TLS; want plain HTTP")
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "callscope_test_scrapes_total 42") {
		t.Errorf("GET /metrics: %d %q", resp.StatusCode, b)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("a.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writePair(t, dir, certPEM, keyPEM)
	otherCert, _, err := certutil.GenerateSelfSignedCertKey("b.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mismatched, _ := writePair(t, filepath.Join(dir, "other"), otherCert, keyPEM)

	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"kubernetes without a client", Config{Auth: AuthKubernetes}, "needs a Kubernetes API server"},
		{"unknown auth", Config{Auth: "basic"}, `"basic": want kubernetes or none`},
		{"certificate without key", Config{Auth: AuthNone, CertFile: certFile}, "both the certificate and the key"},
		{"missing files", Config{Auth: AuthNone, CertFile: filepath.Join(dir, "nope.crt"), KeyFile: keyFile}, "nope.crt"},
		{"key of another certificate", Config{Auth: AuthNone, CertFile: mismatched, KeyFile: keyFile}, "private key does not match"},
		{"address in use", Config{Auth: AuthNone, Addr: "127.0.0.1:" + busyPort(t)}, "metrics listener"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.cfg.Addr == "" {
				c.cfg.Addr = "127.0.0.1:0"
			}
			s, err := Start(context.Background(), c.cfg)
			if err == nil {
				s.Shutdown(context.Background())
				t.Fatalf("Start succeeded, want an error with %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to say %q", err, c.want)
			}
		})
	}
}

func busyPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// writePair writes a certificate and key as the kubelet updates a Secret
// volume: files behind a ..data link to a folder of this generation,
// swapped at once, after which the folder of the last generation goes.
func writePair(t *testing.T, dir string, certPEM, keyPEM []byte) (string, string) {
	t.Helper()
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	gen := filepath.Join(dir, "..gen-"+time.Now().Format("150405.000000000"))
	if err := os.MkdirAll(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "tls.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "tls.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(dir, f)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", f), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
}

// TestCertFilesReloaded swaps the certificate files, as the kubelet
// updates a Secret volume, and waits for the server to present the new
// certificate to new connections.
func TestCertFilesReloaded(t *testing.T) {
	dir := t.TempDir()
	certA, keyA, err := certutil.GenerateSelfSignedCertKey("first.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writePair(t, dir, certA, keyA)
	s := startServer(t, Config{Auth: AuthNone, CertFile: certFile, KeyFile: keyFile})
	if !s.TLS() {
		t.Fatal("certificate files given: want TLS")
	}
	// certutil names a certificate host@time.
	if got := peerChain(t, s)[0].Subject.CommonName; !strings.HasPrefix(got, "first.test@") {
		t.Fatalf("serving %q, want first.test", got)
	}

	certB, keyB, err := certutil.GenerateSelfSignedCertKey("second.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, dir, certB, keyB)
	waitServing(t, s, "second.test")

	// Files written over in place, one after the other: between the two
	// writes the pair does not match, and the last good one stays.
	certC, keyC, err := certutil.GenerateSelfSignedCertKey("third.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, certC, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := peerChain(t, s)[0].Subject.CommonName; !strings.HasPrefix(got, "second.test@") {
		t.Errorf("with the new certificate and the old key, serving %q, want second.test", got)
	}
	if err := os.WriteFile(keyFile, keyC, 0o600); err != nil {
		t.Fatal(err)
	}
	waitServing(t, s, "third.test")
}

func waitServing(t *testing.T, s *Server, host string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := peerChain(t, s)[0].Subject.CommonName
		if strings.HasPrefix(got, host+"@") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving %q 30 s after the files changed, want %s", got, host)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
