package exporter

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
)

// KafkaTLSConfig returns the TLS configuration for the brokers: their
// certificates are checked against the CAs in caFile, or the system's when
// caFile is empty; certFile and keyFile, given together, are the client
// certificate for mutual TLS.
func KafkaTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("kafka CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka CA file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case certFile != "" || keyFile != "":
		return nil, errors.New("kafka client certificate: give both the certificate and the key file, or neither")
	}
	return cfg, nil
}

// KafkaSASL returns the SASL mechanism named: "plain", "scram-sha-256" or
// "scram-sha-512" (case does not matter). An empty name means no SASL and
// returns nil.
func KafkaSASL(mechanism, username, password string) (sasl.Mechanism, error) {
	if mechanism == "" {
		return nil, nil
	}
	if username == "" {
		return nil, fmt.Errorf("kafka SASL %s: a user name is needed", mechanism)
	}
	switch strings.ToLower(mechanism) {
	case "plain":
		return plain.Mechanism{Username: username, Password: password}, nil
	case "scram-sha-256":
		return &scram{name: "SCRAM-SHA-256", hash: sha256.New, user: username, pass: password}, nil
	case "scram-sha-512":
		return &scram{name: "SCRAM-SHA-512", hash: sha512.New, user: username, pass: password}, nil
	}
	return nil, fmt.Errorf("kafka SASL mechanism %q: want plain, scram-sha-256 or scram-sha-512", mechanism)
}

// scram is the client side of SCRAM (RFC 5802) as Kafka speaks it:
// without channel binding, and without SASLprep of the password, as
// Kafka's own clients do.
type scram struct {
	name       string
	hash       func() hash.Hash
	user, pass string
}

func (m *scram) Name() string { return m.name }

func (m *scram) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, nil, fmt.Errorf("scram nonce: %w", err)
	}
	nonce := base64.RawStdEncoding.EncodeToString(raw[:])
	user := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(m.user)
	bare := "n=" + user + ",r=" + nonce
	return &scramSession{m: m, nonce: nonce, clientFirstBare: bare}, []byte("n,," + bare), nil
}

type scramSession struct {
	m               *scram
	nonce           string
	clientFirstBare string
	serverSignature []byte // set once the client's proof is sent
}

func (s *scramSession) Next(ctx context.Context, challenge []byte) (bool, []byte, error) {
	if s.serverSignature != nil {
		return s.verifyServer(challenge)
	}
	attrs, err := scramAttrs(challenge)
	if err != nil {
		return false, nil, err
	}
	nonce, salt64, iter := attrs["r"], attrs["s"], attrs["i"]
	if !strings.HasPrefix(nonce, s.nonce) || len(nonce) == len(s.nonce) {
		return false, nil, errors.New("scram: the server's nonce does not extend ours")
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil || len(salt) == 0 {
		return false, nil, errors.New("scram: bad salt from the server")
	}
	iterations, err := strconv.Atoi(iter)
	// RFC 7677 asks for at least 4096 iterations; fewer would make the
	// exchange cheap to brute-force for whoever sees it.
	if err != nil || iterations < 4096 {
		return false, nil, fmt.Errorf("scram: refusing %q iterations from the server", iter)
	}
	salted, err := pbkdf2.Key(s.m.hash, s.m.pass, salt, iterations, s.m.hash().Size())
	if err != nil {
		return false, nil, fmt.Errorf("scram: %w", err)
	}
	clientKey := s.hmac(salted, "Client Key")
	h := s.m.hash()
	h.Write(clientKey)
	storedKey := h.Sum(nil)
	withoutProof := "c=biws,r=" + nonce // biws: base64("n,,")
	authMessage := s.clientFirstBare + "," + string(challenge) + "," + withoutProof
	proof := s.hmac(storedKey, authMessage)
	for i := range proof {
		proof[i] ^= clientKey[i]
	}
	s.serverSignature = s.hmac(s.hmac(salted, "Server Key"), authMessage)
	return false, []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// verifyServer checks the server-final message: a server that proves it
// knows the password too.
func (s *scramSession) verifyServer(msg []byte) (bool, []byte, error) {
	attrs, err := scramAttrs(msg)
	if err != nil {
		return false, nil, err
	}
	if e, ok := attrs["e"]; ok {
		return false, nil, fmt.Errorf("scram: the server refused: %s", e)
	}
	got, err := base64.StdEncoding.DecodeString(attrs["v"])
	if err != nil || subtle.ConstantTimeCompare(got, s.serverSignature) != 1 {
		return false, nil, errors.New("scram: the server's signature is wrong: it does not know the password")
	}
	return true, nil, nil
}

func (s *scramSession) hmac(key []byte, msg string) []byte {
	mac := hmac.New(s.m.hash, key)
	mac.Write([]byte(msg))
	return mac.Sum(nil)
}

// scramAttrs parses "k=v,k=v".
func scramAttrs(msg []byte) (map[string]string, error) {
	attrs := map[string]string{}
	for _, part := range bytes.Split(msg, []byte(",")) {
		k, v, ok := bytes.Cut(part, []byte("="))
		if !ok || len(k) != 1 {
			return nil, fmt.Errorf("scram: malformed server message %q", msg)
		}
		attrs[string(k)] = string(v)
	}
	return attrs, nil
}

// saslWatch tells when a broker hangs up in the middle of authentication,
// as some do, instead of answering with an error, when the credentials are
// wrong: the exchange is then left unfinished.
type saslWatch struct {
	sasl.Mechanism
	mu   sync.Mutex
	open map[*watchedSession]time.Time
}

func newSASLWatch(m sasl.Mechanism) *saslWatch {
	return &saslWatch{Mechanism: m, open: map[*watchedSession]time.Time{}}
}

func (w *saslWatch) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	sm, ir, err := w.Mechanism.Start(ctx)
	if err != nil {
		return nil, nil, err
	}
	s := &watchedSession{StateMachine: sm, w: w}
	w.mu.Lock()
	w.open[s] = time.Now()
	w.mu.Unlock()
	return s, ir, nil
}

// hungUp reports whether an exchange begun within the last d was left
// unfinished, and forgets the unfinished ones.
func (w *saslWatch) hungUp(d time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	found := false
	for s, t := range w.open {
		if time.Since(t) < d {
			found = true
		}
		delete(w.open, s)
	}
	return found
}

type watchedSession struct {
	sasl.StateMachine
	w *saslWatch
}

func (s *watchedSession) Next(ctx context.Context, challenge []byte) (bool, []byte, error) {
	done, resp, err := s.StateMachine.Next(ctx, challenge)
	if done || err != nil {
		s.w.mu.Lock()
		delete(s.w.open, s)
		s.w.mu.Unlock()
	}
	return done, resp, err
}
