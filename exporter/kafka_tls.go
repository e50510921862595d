package exporter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
)

// The sink makes the TLS handshake with a broker itself, as part of
// dialing, rather than leaving it to kafka-go's first request: what goes
// wrong in it is then known to be TLS, whatever the broker did with the
// ClientHello (hung up, answered with bytes that are not TLS, or waited for
// more, as a plaintext listener does), and never taken for a lost
// connection or a slow broker. TLS is never given up for plaintext.

// dialFunc dials a broker, as kafka.Transport.Dial does.
type dialFunc = func(ctx context.Context, network, address string) (net.Conn, error)

// dialTLS returns dial with a TLS handshake by cfg on top.
func dialTLS(dial dialFunc, cfg *tls.Config) dialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		c := cfg.Clone()
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				host = address
			}
			c.ServerName = host
		}
		var asked atomic.Bool
		if c.GetClientCertificate == nil {
			certs := c.Certificates
			c.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked.Store(true)
				// As crypto/tls chooses without this function: the first
				// certificate the server's request allows, else none.
				for i := range certs {
					if cri.SupportsCertificate(&certs[i]) == nil {
						return &certs[i], nil
					}
				}
				return new(tls.Certificate), nil
			}
		}
		tc := tls.Client(conn, c)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, &tlsHandshakeError{addr: address, err: err}
		}
		if tc.ConnectionState().Version == tls.VersionTLS13 && asked.Load() {
			return &mutualTLS13Conn{Conn: tc, addr: address}, nil
		}
		return tc, nil
	}
}

// tlsHandshakeError is a TLS handshake with a broker that failed.
type tlsHandshakeError struct {
	addr string
	err  error
	// refused: the client's side of a TLS 1.3 handshake was done, and the
	// broker hung up before it answered anything.
	refused bool
}

func (e *tlsHandshakeError) Error() string {
	if e.refused {
		return "TLS handshake with " + e.addr + ": the broker hung up before its first answer, as a TLS 1.3 broker does when it refuses the client certificate: " + e.err.Error()
	}
	return "TLS handshake with " + e.addr + ": " + e.err.Error()
}

func (e *tlsHandshakeError) Unwrap() error { return e.err }

// mutualTLS13Conn is a TLS 1.3 connection whose broker asked for a client
// certificate. TLS 1.3 has the broker check the certificate after the
// client's side of the handshake is done: a broker that refuses it sends
// an alert and hangs up, and the client learns it from its first read, or,
// when the hang-up came first, from a reset or closed connection. Until
// the broker has answered once, those mean the handshake failed.
type mutualTLS13Conn struct {
	*tls.Conn
	addr     string
	answered atomic.Bool
}

func (c *mutualTLS13Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.answered.Store(true)
	}
	return n, c.check(err)
}

func (c *mutualTLS13Conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	return n, c.check(err)
}

func (c *mutualTLS13Conn) check(err error) error {
	if err == nil || c.answered.Load() || remoteAlert(err) || !hungUp(err) {
		return err
	}
	return &tlsHandshakeError{addr: c.addr, err: err, refused: true}
}

func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// remoteAlert reports whether err holds a TLS alert the broker sent.
// crypto/tls gives those as a *net.OpError of Op "remote error".
func remoteAlert(err error) bool {
	var op *net.OpError
	for errors.As(err, &op) {
		if op.Op == "remote error" {
			return true
		}
		err = op.Err
	}
	return false
}

// tlsFailure says, for an error of TLS with the brokers, what is wrong and
// what to look at; ok is false for any other error.
func tlsFailure(err error) (hint string, ok bool) {
	const failed = "TLS with the Kafka brokers failed: "
	var (
		hostname  x509.HostnameError
		authority x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		certErr   *tls.CertificateVerificationError
		recordHdr tls.RecordHeaderError
		alert     tls.AlertError
		ech       *tls.ECHRejectionError
		handshake *tlsHandshakeError
	)
	switch {
	case errors.As(err, &hostname):
		return failed + "the broker's certificate does not name the address the agent connects to: " +
			"the brokers given and the ones they advertise must be among its names", true
	case errors.As(err, &authority):
		return failed + "the broker's certificate is not signed by a CA of --kafka-ca-file (or of the system, without one)", true
	case errors.As(err, &invalid), errors.As(err, &certErr):
		return failed + "the broker's certificate is not valid", true
	case remoteAlert(err), errors.As(err, &handshake) && handshake.refused:
		return failed + "the broker refused the TLS handshake: check the client certificate " +
			"(--kafka-cert-file, --kafka-key-file), that the brokers' client CA signed it and that it is valid", true
	case errors.As(err, &recordHdr),
		errors.As(err, &handshake) && (hungUp(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)):
		return failed + "the broker did not answer the TLS handshake: is the listener TLS? " +
			"(--kafka-tls against a plaintext listener)", true
	case errors.As(err, &handshake), errors.As(err, &alert), errors.As(err, &ech):
		return failed + "check --kafka-ca-file, the client certificate, and that the listener speaks TLS", true
	}
	return "", false
}
