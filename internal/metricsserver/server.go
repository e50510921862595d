// Package metricsserver serves the agent's /metrics and its probes'
// /healthz and /readyz.
//
// With Kubernetes, /metrics is served the way the ecosystem serves it
// (controller-runtime's metrics filter, kube-rbac-proxy): over TLS, to a
// bearer token the API server accepts (TokenReview) whose user may get the
// path (SubjectAccessReview of a non-resource URL), while the probes stay
// open for the kubelet. Without Kubernetes it is plain HTTP, on the
// loopback address by default.
package metricsserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
)

// The values of Config.Auth.
const (
	AuthNone       = "none"
	AuthKubernetes = "kubernetes"
)

// Config is what Start serves, and how.
type Config struct {
	Addr string
	// Auth is AuthNone or AuthKubernetes, which needs Kube and TLS.
	Auth string
	// Kube reviews tokens and access, with AuthKubernetes.
	Kube kubernetes.Interface
	// CertFile and KeyFile are PEM files of the serving certificate (its
	// chain) and key; given, the server speaks TLS. With AuthKubernetes
	// and no files, it makes a self-signed certificate.
	CertFile, KeyFile string
	// Protected paths are behind Auth; Open paths are not.
	Protected map[string]http.Handler
	Open      map[string]http.Handler
	// Logger is where the server logs; nil logs nothing.
	Logger *slog.Logger
}

// Server is a running metrics server.
type Server struct {
	srv *http.Server
	ln  net.Listener
	// selfSignedCA is the CA of the certificate made at start, if any.
	selfSignedCA *x509.Certificate
	tls          bool
}

// Start listens on cfg.Addr and serves until Shutdown. ctx bounds the
// watch of the certificate files.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{}
	mux := http.NewServeMux()
	for path, h := range cfg.Open {
		mux.Handle(path, h)
	}

	switch cfg.Auth {
	case AuthNone:
		for path, h := range cfg.Protected {
			mux.Handle(path, h)
		}
	case AuthKubernetes:
		if cfg.Kube == nil {
			return nil, errors.New("metrics auth kubernetes needs a Kubernetes API server (--kubeconfig, or run in a pod)")
		}
		auth := newKubeAuth(cfg.Kube, log)
		for path, h := range cfg.Protected {
			mux.Handle(path, auth.wrap(h))
		}
	default:
		return nil, fmt.Errorf("metrics auth %q: want %s or %s", cfg.Auth, AuthKubernetes, AuthNone)
	}

	tlsConfig, err := s.tlsConfig(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if tlsConfig != nil {
		s.tls = true
		s.srv.TLSConfig = tlsConfig
		// HTTP/1.1 only, as controller-runtime's metrics server defaults
		// to: a scrape is one request, and HTTP/2's stream handling is
		// attack surface (CVE-2023-44487) nothing here needs.
		s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		ln = tls.NewListener(ln, tlsConfig)
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "tls", s.tls, "auth", cfg.Auth)
	return s, nil
}

// tlsConfig is nil for plain HTTP.
func (s *Server) tlsConfig(ctx context.Context, cfg Config, log *slog.Logger) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	switch {
	case (cfg.CertFile == "") != (cfg.KeyFile == ""):
		return nil, errors.New("metrics certificate: give both the certificate and the key file, or neither")
	case cfg.CertFile != "":
		fc, err := newFileCert(ctx, cfg.CertFile, cfg.KeyFile, log)
		if err != nil {
			return nil, err
		}
		conf.GetCertificate = fc.getCertificate
		return conf, nil
	case cfg.Auth == AuthKubernetes:
		host, _, _ := net.SplitHostPort(cfg.Addr)
		cert, ca, err := selfSigned(host)
		if err != nil {
			return nil, err
		}
		s.selfSignedCA = ca
		conf.Certificates = []tls.Certificate{cert}
		log.Info("metrics served with a self-signed certificate made at start; scrapers skip verification or pin its CA",
			"ca", ca.Subject.CommonName, "ca_sha256", fingerprint(ca), "not_after", ca.NotAfter)
		return conf, nil
	default:
		return nil, nil
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// TLS reports whether the server speaks TLS.
func (s *Server) TLS() bool { return s.tls }

// Shutdown stops the server, letting requests in progress end.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
