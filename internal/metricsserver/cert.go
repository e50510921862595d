package metricsserver

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"

	"k8s.io/apiserver/pkg/server/dynamiccertificates"
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
// pair when either file changes: k8s.io/apiserver's dynamic serving
// content watches them with inotify, following a Secret volume's update
// (the kubelet swaps its ..data link, then removes the old files). A pair
// that does not load (one file written, the other not yet) keeps the last
// good one in use.
type fileCert struct {
	content *dynamiccertificates.DynamicCertKeyPairContent
	current atomic.Pointer[tls.Certificate]
	log     *slog.Logger
}

func newFileCert(ctx context.Context, certFile, keyFile string, log *slog.Logger) (*fileCert, error) {
	content, err := dynamiccertificates.NewDynamicServingContentFromFiles("metrics", certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("metrics certificate %s, key %s: %w", certFile, keyFile, err)
	}
	f := &fileCert{content: content, log: log}
	if err := f.load(); err != nil {
		return nil, fmt.Errorf("metrics certificate %s, key %s: %w", certFile, keyFile, err)
	}
	content.AddListener(f)
	go content.Run(ctx, 1)
	return f, nil
}

// Enqueue is called when the files hold a new, valid pair.
func (f *fileCert) Enqueue() {
	if err := f.load(); err != nil {
		f.log.Error("metrics certificate not reloaded; the previous one is served", "error", err)
		return
	}
	f.log.Info("metrics certificate reloaded", "certificate", f.content.Name())
}

func (f *fileCert) load() error {
	certPEM, keyPEM := f.content.CurrentCertKeyContent()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	f.current.Store(&cert)
	return nil
}

func (f *fileCert) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.current.Load(), nil
}
