package metricsserver

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// syncBuffer is a log that tests read while the server writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged within 30 s; log:\n%s", text, s.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newPair(t *testing.T, host string) ([]byte, []byte) {
	t.Helper()
	c, k, err := certutil.GenerateSelfSignedCertKey(host, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCertMismatchKeepsServing leaves a new certificate with the old key
// until the server has tried it: the old pair is served, and the new one
// once its key comes.
func TestCertMismatchKeepsServing(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := newPair(t, "first.test")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, certA)
	writeFile(t, keyFile, keyA)
	logs := &syncBuffer{}
	s := startServer(t, Config{Auth: AuthNone, CertFile: certFile, KeyFile: keyFile, Logger: slog.New(slog.NewTextHandler(logs, nil))})

	certB, keyB := newPair(t, "second.test")
	writeFile(t, certFile, certB)
	logs.waitFor(t, "metrics certificate not reloaded")
	if got := peerChain(t, s)[0].Subject.CommonName; !strings.HasPrefix(got, "first.test@") {
		t.Errorf("with the new certificate and the old key, serving %q, want first.test", got)
	}
	writeFile(t, keyFile, keyB)
	waitServing(t, s, "second.test")
}

// TestCertLinkRetargeted points the file names at new files, the old ones
// left in place, then writes the new ones over: the watch follows the
// names, not the files they named at start.
func TestCertLinkRetargeted(t *testing.T) {
	dir := t.TempDir()
	link := func(target, name string) {
		t.Helper()
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	certA, keyA := newPair(t, "first.test")
	writeFile(t, filepath.Join(dir, "a.crt"), certA)
	writeFile(t, filepath.Join(dir, "a.key"), keyA)
	link("a.crt", "tls.crt")
	link("a.key", "tls.key")
	s := startServer(t, Config{Auth: AuthNone, CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")})

	certB, keyB := newPair(t, "second.test")
	writeFile(t, filepath.Join(dir, "b.crt"), certB)
	writeFile(t, filepath.Join(dir, "b.key"), keyB)
	link("b.crt", "tls.crt")
	link("b.key", "tls.key")
	waitServing(t, s, "second.test")

	certC, keyC := newPair(t, "third.test")
	writeFile(t, filepath.Join(dir, "b.crt"), certC)
	writeFile(t, filepath.Join(dir, "b.key"), keyC)
	waitServing(t, s, "third.test")
}

// TestCertWatchEndsWithContext checks that the watch stops with the
// server's context.
func TestCertWatchEndsWithContext(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := newPair(t, "first.test")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, certA)
	writeFile(t, keyFile, keyA)
	ctx, cancel := context.WithCancel(context.Background())
	fc, err := newFileCert(ctx, certFile, keyFile, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-fc.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the certificate watch goes on 30 s after its context ended")
	}
}
