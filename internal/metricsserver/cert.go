package metricsserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	certutil "k8s.io/client-go/util/cert"
)

// selfSigned makes a serving certificate for the host's names, signed by
// a CA made for it, as an API server with no --tls-cert-file does
// (k8s.io/client-go/util/cert): both are valid for a year from now and
// live in memory only. A scraper cannot verify them against anything it
// knows beforehand; it either skips verification or pins the CA the agent
// logs.
func selfSigned(listenHost string) (tls.Certificate, *x509.Certificate, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if ip := net.ParseIP(listenHost); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		ips = append(ips, ip)
	}
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(host, ips, []string{"localhost"})
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	// The chain is the serving certificate, then its CA.
	ca, err := x509.ParseCertificate(cert.Certificate[len(cert.Certificate)-1])
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	return cert, ca, nil
}

// fingerprint is a certificate's SHA-256, as `openssl x509 -fingerprint
// -sha256` prints it without the colons.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// fileCert serves the certificate and key of two PEM files, and the new
// pair when either file changes. It watches the files, through any link
// (a write in place, the old generation of a Secret volume removed), and
// the folders holding them (the kubelet swapping a Secret volume's ..data
// link, a file renamed over another), and checks again every minute in
// case a change went unseen. A pair that does not load (one file written,
// the other not yet) keeps the last good one in use.
type fileCert struct {
	certFile, keyFile string
	current           atomic.Pointer[tls.Certificate]
	// certPEM and keyPEM are what current was made of.
	certPEM, keyPEM []byte
	log             *slog.Logger
	// done is closed when the watch has ended.
	done chan struct{}
}

// certSettle is how long the files must stay quiet before they are read:
// a pair is written as two files, often in several writes.
const certSettle = 200 * time.Millisecond

func newFileCert(ctx context.Context, certFile, keyFile string, log *slog.Logger) (*fileCert, error) {
	f := &fileCert{certFile: filepath.Clean(certFile), keyFile: filepath.Clean(keyFile), log: log, done: make(chan struct{})}
	// Watch before the first load, so that no change falls between them.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("cannot watch the metrics certificate files; they are checked every minute", "error", err)
	} else {
		f.rearm(w)
	}
	if _, err := f.load(); err != nil {
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("metrics certificate %s, key %s: %w", certFile, keyFile, err)
	}
	go f.watch(ctx, w)
	return f, nil
}

// rearm watches the files where their names lead now, dropping a watch
// left on a file they led to before, and their folders.
func (f *fileCert) rearm(w *fsnotify.Watcher) {
	for _, name := range []string{f.certFile, f.keyFile, filepath.Dir(f.certFile), filepath.Dir(f.keyFile)} {
		if name == f.certFile || name == f.keyFile {
			w.Remove(name)
		}
		if err := w.Add(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			f.log.Warn("cannot watch for metrics certificate changes; they are checked every minute", "path", name, "error", err)
		}
	}
}

// relevant reports whether an event on name may change the pair.
func (f *fileCert) relevant(name string) bool {
	for _, file := range []string{f.certFile, f.keyFile} {
		if name == file || filepath.Dir(name) == filepath.Dir(file) && strings.HasPrefix(filepath.Base(name), "..") {
			return true
		}
	}
	return false
}

func (f *fileCert) watch(ctx context.Context, w *fsnotify.Watcher) {
	defer close(f.done)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	every := time.NewTicker(time.Minute)
	defer every.Stop()
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Op != fsnotify.Chmod && f.relevant(ev.Name) {
				quiet.Reset(certSettle)
			}
		case err, ok := <-errs:
			if !ok {
				return
			}
			// Most likely the kernel's event queue overflowed: read again.
			f.log.Warn("watching the metrics certificate files", "error", err)
			quiet.Reset(certSettle)
		case <-quiet.C:
			f.rearm(w) // only events start quiet: w is there
			f.reload()
		case <-every.C:
			if w != nil {
				f.rearm(w)
			}
			f.reload()
		}
	}
}

func (f *fileCert) reload() {
	changed, err := f.load()
	switch {
	case err != nil:
		f.log.Error("metrics certificate not reloaded; the previous one is served", "cert", f.certFile, "key", f.keyFile, "error", err)
	case changed:
		f.log.Info("metrics certificate reloaded", "cert", f.certFile, "key", f.keyFile)
	}
}

// load reads the pair, and serves it if it is new and valid.
func (f *fileCert) load() (bool, error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return false, err
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return false, err
	}
	if bytes.Equal(certPEM, f.certPEM) && bytes.Equal(keyPEM, f.keyPEM) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, err
	}
	f.certPEM, f.keyPEM = certPEM, keyPEM
	f.current.Store(&cert)
	return true, nil
}

func (f *fileCert) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.current.Load(), nil
}
