package exporter

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// testPKI is a certificate authority made for a test.
type testPKI struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	dir    string
	caFile string // its certificate, PEM
	serial int64
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &testPKI{cert: cert, key: key, dir: dir, caFile: filepath.Join(dir, "ca.pem"), serial: 1}
	if err := os.WriteFile(ca.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

func (ca *testPKI) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// leaf is a certificate to issue: a server's for the names and addresses
// given, or a client's.
type leaf struct {
	cn       string
	usage    x509.ExtKeyUsage
	dnsNames []string
	ips      []net.IP
	expired  bool
}

func (ca *testPKI) issue(t *testing.T, l leaf) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.serial++
	notAfter := time.Now().Add(time.Hour)
	if l.expired {
		notAfter = time.Now().Add(-time.Minute)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: l.cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		DNSNames: l.dnsNames, IPAddresses: l.ips, ExtKeyUsage: []x509.ExtKeyUsage{l.usage},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// brokerCert is a broker's certificate for the loopback address.
func (ca *testPKI) brokerCert(t *testing.T) tls.Certificate {
	return ca.issue(t, leaf{cn: "broker", usage: x509.ExtKeyUsageServerAuth, ips: []net.IP{loopback}})
}

// writeKeyPair writes c as the PEM files the agent is given.
func (ca *testPKI) writeKeyPair(t *testing.T, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

var loopback = net.IPv4(127, 0, 0, 1)

// countRequests counts the Kafka requests c handles, and its produce
// requests apart.
func countRequests(c *kfake.Cluster) (all, produce *atomic.Int64) {
	all, produce = new(atomic.Int64), new(atomic.Int64)
	c.Control(func(r kmsg.Request) (kmsg.Response, error, bool) {
		all.Add(1)
		if r.Key() == kmsg.Produce.Int16() {
			produce.Add(1)
		}
		return nil, nil, false
	})
	return all, produce
}

// failsClosed writes events to k, whose TLS with its brokers fails, and
// checks that none is delivered, all stay spooled, and the failures are
// counted as tls, logged once with a reason that says what is wrong.
// It returns how many events it wrote.
func failsClosed(t *testing.T, env *sinkEnv, k *Kafka, produced *atomic.Int64, why ...string) int {
	t.Helper()
	if err := k.Write(testMsgs(0, 100)); err != nil {
		t.Fatal(err)
	}
	failures := func(reason string) float64 {
		return env.metric(t, "callscope_kafka_delivery_failures_total", "reason", reason)
	}
	eventually(t, 60*time.Second, "two TLS failures", func() bool { return failures("tls") >= 2 })
	if err := k.Write(testMsgs(100, 150)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the spool to grow", func() bool { return env.metric(t, "callscope_spool_events") == 150 })
	eventually(t, 60*time.Second, "another TLS failure", func() bool { return failures("tls") >= 3 })
	for _, r := range failureReasons {
		if n := failures(r); r != "tls" && n != 0 {
			t.Errorf("%v failures counted as %s, not tls", n, r)
		}
	}
	for _, topic := range topicKinds {
		if n := env.metric(t, "callscope_kafka_messages_delivered_total", "topic", topic); n != 0 {
			t.Errorf("%v %s delivered", n, topic)
		}
	}
	if n := produced.Load(); n != 0 {
		t.Errorf("the broker was sent %d produce requests", n)
	}
	if got := env.metric(t, "callscope_spool_events"); got != 150 {
		t.Errorf("%v events spooled, want 150", got)
	}
	if d := takeDropped(k); d != 0 {
		t.Errorf("%d events dropped", d)
	}
	logs := env.logs.String()
	if n := strings.Count(logs, "reason=tls"); n != 1 {
		t.Errorf("TLS failure logged %d times, want once a minute:\n%s", n, logs)
	}
	if !slices.ContainsFunc(why, func(w string) bool { return strings.Contains(logs, w) }) {
		t.Errorf("the log does not say %q:\n%s", why, logs)
	}
	return 150
}

// delivered checks that the n events spooled reach the brokers once TLS
// works, and are read back over TLS configured by tc.
func delivered(t *testing.T, env *sinkEnv, brokers []string, tc *tls.Config, n int) {
	t.Helper()
	eventually(t, 30*time.Second, "the spooled events to be delivered", func() bool {
		return env.metric(t, "callscope_spool_events") == 0 &&
			env.metric(t, "callscope_kafka_messages_delivered_total", "topic", "events") >= float64(n)
	})
	checkStream(t, consumeOver(t, tc, brokers, testTopic, 20*time.Second, atLeast(n)), 0, n, false)
	nv := countViolations(0, n)
	checkStream(t, consumeOver(t, tc, brokers, testViolations, 20*time.Second, atLeast(nv)), 0, n, true)
}

// TestKafkaTLSToPlaintextBroker: --kafka-tls against a listener that does
// not speak TLS. The broker never answers the ClientHello (kfake waits for
// the request its first bytes announce, as some brokers do; others hang
// up): the agent sends it nothing else, and says so.
func TestKafkaTLSToPlaintextBroker(t *testing.T) {
	ca := newTestPKI(t, "broker CA")
	plain := newCluster(t)
	requests, produced := countRequests(plain)
	spool := t.TempDir()
	env := newSinkEnv(t, plain.ListenAddrs(), spool)
	var err error
	if env.cfg.TLS, err = KafkaTLSConfig(ca.caFile, "", ""); err != nil {
		t.Fatal(err)
	}
	k := env.start(t)
	n := failsClosed(t, env, k, produced, "is the listener TLS?")
	if r := requests.Load(); r != 0 {
		t.Errorf("the plaintext broker handled %d Kafka requests", r)
	}
	closeSink(t, k)

	// Pointed at the broker's TLS listener, the agent delivers what it
	// spooled.
	server := &tls.Config{Certificates: []tls.Certificate{ca.brokerCert(t)}}
	secure := newCluster(t, kfake.TLS(server))
	env2 := newSinkEnv(t, secure.ListenAddrs(), spool)
	env2.cfg.TLS = env.cfg.TLS
	env2.start(t)
	delivered(t, env2, secure.ListenAddrs(), &tls.Config{RootCAs: ca.pool()}, n)
}

// TestKafkaTLSHostnameMismatch: the broker's certificate is signed by the
// CA given, but names another host than the one the agent connects to.
func TestKafkaTLSHostnameMismatch(t *testing.T) {
	ca := newTestPKI(t, "broker CA")
	var cert atomic.Pointer[tls.Certificate]
	wrong := ca.issue(t, leaf{cn: "kafka-0", usage: x509.ExtKeyUsageServerAuth,
		dnsNames: []string{"kafka-0.kafka.example"}, ips: []net.IP{net.IPv4(10, 0, 0, 9)}})
	cert.Store(&wrong)
	server := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Load(), nil }}
	c := newCluster(t, kfake.TLS(server))
	_, produced := countRequests(c)
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	var err error
	if env.cfg.TLS, err = KafkaTLSConfig(ca.caFile, "", ""); err != nil {
		t.Fatal(err)
	}
	k := env.start(t)
	n := failsClosed(t, env, k, produced, "x509: certificate is valid for 10.0.0.9, not 127.0.0.1")
	if logs := env.logs.String(); !strings.Contains(logs, "does not name the address") {
		t.Errorf("the log does not say what to fix:\n%s", logs)
	}

	// The broker is given a certificate for its address: the agent goes
	// on by itself.
	right := ca.issue(t, leaf{cn: "kafka-0", usage: x509.ExtKeyUsageServerAuth,
		dnsNames: []string{"kafka-0.kafka.example"}, ips: []net.IP{loopback}})
	cert.Store(&right)
	delivered(t, env, c.ListenAddrs(), &tls.Config{RootCAs: ca.pool()}, n)
	if logs := env.logs.String(); !strings.Contains(logs, "Kafka delivery resumed") {
		t.Errorf("the log does not say delivery resumed:\n%s", logs)
	}
}

// TestKafkaTLSClientCertificateRefused: the broker asks for a client
// certificate its client CA signed, and the agent has none, one of another
// CA of the same name, or an expired one. TLS 1.2 refuses it during the
// handshake; TLS 1.3 once the client's side of it is done, with an alert
// the client reads after sending its first request, or, when the broker
// hung up first, with the connection reset: each is a TLS failure.
func TestKafkaTLSClientCertificateRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cert  string // "", "impostor", "expired"
		alert [2]string
	}{
		{"none", "", [2]string{"tls: handshake failure", "tls: certificate required"}},
		{"another CA of the same name", "impostor", [2]string{"tls: unknown certificate authority", "tls: unknown certificate authority"}},
		{"expired", "expired", [2]string{"tls: expired certificate", "tls: expired certificate"}},
	} {
		for i, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(tc.name+"/"+tls.VersionName(version), func(t *testing.T) {
				brokerCA, clientCA := newTestPKI(t, "broker CA"), newTestPKI(t, "client CA")
				server := &tls.Config{
					Certificates: []tls.Certificate{brokerCA.brokerCert(t)},
					ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: clientCA.pool(),
					MaxVersion: version,
				}
				c := newCluster(t, kfake.TLS(server))
				_, produced := countRequests(c)
				spool := t.TempDir()
				env := newSinkEnv(t, c.ListenAddrs(), spool)
				var certFile, keyFile string
				agent := leaf{cn: "agent", usage: x509.ExtKeyUsageClientAuth}
				switch tc.cert {
				case "impostor":
					impostor := newTestPKI(t, "client CA")
					certFile, keyFile = impostor.writeKeyPair(t, "agent", impostor.issue(t, agent))
				case "expired":
					agent.expired = true
					certFile, keyFile = clientCA.writeKeyPair(t, "agent", clientCA.issue(t, agent))
				}
				var err error
				if env.cfg.TLS, err = KafkaTLSConfig(brokerCA.caFile, certFile, keyFile); err != nil {
					t.Fatal(err)
				}
				k := env.start(t)
				why := []string{"remote error: " + tc.alert[i]}
				if version == tls.VersionTLS13 {
					why = append(why, "as a TLS 1.3 broker does when it refuses the client certificate")
				}
				n := failsClosed(t, env, k, produced, why...)
				if logs := env.logs.String(); !strings.Contains(logs, "the broker refused the TLS handshake") {
					t.Errorf("the log does not say what to fix:\n%s", logs)
				}
				closeSink(t, k)

				// Restarted with a valid certificate of the client CA, the
				// agent delivers what it spooled.
				valid := clientCA.issue(t, leaf{cn: "agent", usage: x509.ExtKeyUsageClientAuth})
				certFile, keyFile = clientCA.writeKeyPair(t, "agent-renewed", valid)
				env2 := newSinkEnv(t, c.ListenAddrs(), spool)
				if env2.cfg.TLS, err = KafkaTLSConfig(brokerCA.caFile, certFile, keyFile); err != nil {
					t.Fatal(err)
				}
				env2.start(t)
				delivered(t, env2, c.ListenAddrs(), &tls.Config{RootCAs: brokerCA.pool(), Certificates: []tls.Certificate{valid}}, n)
			})
		}
	}
}

// closeSink stops k as the agent does, leaving what is undelivered in the
// spool.
func closeSink(t *testing.T, k *Kafka) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTLS13HangUpIsRefusal: a TLS 1.3 broker that asked for a client
// certificate and hangs up before it answers anything refused the
// certificate, though no alert says so, as when its reset overtakes the
// alert. Once it has answered, a hang-up is a lost connection again.
func TestTLS13HangUpIsRefusal(t *testing.T) {
	ca := newTestPKI(t, "broker CA")
	client := ca.issue(t, leaf{cn: "agent", usage: x509.ExtKeyUsageClientAuth})
	for _, tc := range []struct {
		name      string
		askCert   bool
		answer    bool // a byte before the hang-up
		wantTLS   bool
		wantError string
	}{
		{"asked for a certificate, no answer", true, false, true, "as a TLS 1.3 broker does when it refuses the client certificate"},
		{"asked for a certificate, answered", true, true, false, ""},
		{"no certificate asked", false, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			server := &tls.Config{Certificates: []tls.Certificate{ca.brokerCert(t)}, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
			if tc.askCert {
				server.ClientAuth = tls.RequestClientCert
			}
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				tc2 := tls.Server(conn, server)
				if tc2.Handshake() == nil && tc.answer {
					// Answer, and hang up once the answer was read.
					tc2.Write([]byte{0})
					tc2.Read(make([]byte, 16))
				}
				// Hang up with a reset, unread request and all.
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}()
			cfg := &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{client}}
			dial := dialTLS((&net.Dialer{}).DialContext, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := dial(ctx, "tcp", ln.Addr().String())
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			var ioErr error
			buf := make([]byte, 16)
			if tc.answer {
				if _, err := conn.Read(buf); err != nil {
					t.Fatalf("no answer: %v", err)
				}
				if _, err := conn.Write([]byte("request")); err != nil {
					t.Fatal(err)
				}
			}
			for ioErr == nil {
				if _, ioErr = conn.Write([]byte("request")); ioErr == nil {
					_, ioErr = conn.Read(buf)
				}
			}
			reason, _ := kafkaFailure(fmt.Errorf("metadata: %w", ioErr))
			if got := reason == "tls"; got != tc.wantTLS {
				t.Errorf("%v: reason %s", ioErr, reason)
			}
			if !strings.Contains(ioErr.Error(), tc.wantError) {
				t.Errorf("error %q does not say %q", ioErr, tc.wantError)
			}
		})
	}
}
