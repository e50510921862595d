//go:build ignore

// gen_captures records the first bytes that real TLS clients and servers
// send, for the package's tests, and builds the fuzz seed corpus from them.
//
// Run it from this directory, with openssl (3.x) and curl on PATH:
//
//	go run gen_captures.go            # record captures, then build the corpus
//	go run gen_captures.go -corpus    # only rebuild the corpus from testdata
//
// Each client connects to a local listener that keeps what arrives first
// (up to 4096 bytes, as the kernel does) and then hangs up, so no handshake
// completes. Each server gets a recorded ClientHello replayed to it and its
// first flight is kept the same way. Captures go to testdata/clienthello and
// testdata/serverhello; the corpus to testdata/fuzz/<FuzzName>. Captures hold
// fresh randoms and keys: recording again changes every file, and the tests'
// expectations that depend on the client's build (cipher counts, JA4) may
// need updating with the client.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

const (
	captureMax = 4096 // what the kernel keeps of a first flight
	idle       = 500 * time.Millisecond
	serverName = "example.test"
)

func main() {
	corpusOnly := flag.Bool("corpus", false, "only rebuild testdata/fuzz from the captures in testdata")
	flag.Parse()
	log.SetFlags(0)

	if !*corpusOnly {
		if err := recordClients(); err != nil {
			log.Fatal(err)
		}
		if err := recordServers(); err != nil {
			log.Fatal(err)
		}
	}
	if err := buildCorpus(); err != nil {
		log.Fatal(err)
	}
}

// recordClients captures ClientHellos.
func recordClients() error {
	clients := []struct {
		name string
		run  func(ctx context.Context, port int) error
	}{
		{"go_pq", func(ctx context.Context, port int) error {
			// crypto/tls defaults: TLS 1.3 with an X25519MLKEM768 key share.
			return goClient(ctx, port, &tls.Config{ServerName: serverName, NextProtos: []string{"h2", "http/1.1"}})
		}},
		{"go_tls12", func(ctx context.Context, port int) error {
			return goClient(ctx, port, &tls.Config{ServerName: serverName, NextProtos: []string{"http/1.1"}, MaxVersion: tls.VersionTLS12})
		}},
		{"openssl", func(ctx context.Context, port int) error {
			return command(ctx, "openssl", "s_client", "-connect", addr(port), "-servername", serverName, "-alpn", "h2,http/1.1")
		}},
		{"openssl_nosni", func(ctx context.Context, port int) error {
			return command(ctx, "openssl", "s_client", "-connect", addr(port), "-noservername")
		}},
		{"openssl_tls12", func(ctx context.Context, port int) error {
			return command(ctx, "openssl", "s_client", "-connect", addr(port), "-servername", serverName, "-tls1_2")
		}},
		{"curl_h2", func(ctx context.Context, port int) error {
			p := strconv.Itoa(port)
			return command(ctx, "curl", "--silent", "--http2", "--max-time", "5",
				"--resolve", serverName+":"+p+":127.0.0.1", "https://"+serverName+":"+p+"/")
		}},
	}
	for _, c := range clients {
		b, err := capture(c.run)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		if err := write(filepath.Join("testdata", "clienthello", c.name+".bin"), b); err != nil {
			return err
		}
	}
	return nil
}

// capture runs a client against a listener and returns the first bytes the
// client sent.
func capture(client func(ctx context.Context, port int) error) ([]byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- client(ctx, ln.Addr().(*net.TCPAddr).Port) }()

	conn, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	b, err := firstFlight(conn)
	conn.Close()
	cancel()
	<-done // the client fails once hung up on, as it should
	return b, err
}

// firstFlight reads what the peer sends until it pauses or captureMax
// bytes are in.
func firstFlight(conn net.Conn) ([]byte, error) {
	buf := make([]byte, captureMax)
	n := 0
	for n < len(buf) {
		conn.SetReadDeadline(time.Now().Add(idle))
		m, err := conn.Read(buf[n:])
		n += m
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && n > 0 {
				break
			}
			if n > 0 {
				break
			}
			return nil, err
		}
	}
	return buf[:n], nil
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func goClient(ctx context.Context, port int, cfg *tls.Config) error {
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr(port))
	if err == nil {
		conn.Close()
	}
	return err
}

func command(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(nil)
	return cmd.Run()
}

// recordServers captures ServerHellos by replaying recorded ClientHellos.
func recordServers() error {
	certPEM, keyPEM, cert, err := selfSigned()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tlshello")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}

	goPQ, err := os.ReadFile(filepath.Join("testdata", "clienthello", "go_pq.bin"))
	if err != nil {
		return err
	}
	openssl, err := os.ReadFile(filepath.Join("testdata", "clienthello", "openssl.bin"))
	if err != nil {
		return err
	}

	servers := []struct {
		name  string
		hello []byte
		serve func(ctx context.Context) (port int, stop func(), err error)
	}{
		{"go_tls13", goPQ, goServer(cert, nil)},
		{"go_tls12", goPQ, goServer(cert, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 })},
		// openssl offers an X25519 share only: a server that wants P-256
		// asks again.
		{"go_hrr", openssl, goServer(cert, func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.CurveP256} })},
		{"openssl_tls13", goPQ, opensslServer(certFile, keyFile)},
		{"openssl_tls12", goPQ, opensslServer(certFile, keyFile, "-tls1_2")},
	}
	for _, s := range servers {
		b, err := replay(s.hello, s.serve)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := write(filepath.Join("testdata", "serverhello", s.name+".bin"), b); err != nil {
			return err
		}
	}
	return nil
}

func replay(hello []byte, serve func(ctx context.Context) (int, func(), error)) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	port, stop, err := serve(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()

	var conn net.Conn
	for {
		conn, err = net.Dial("tcp", addr(port))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond): // the server is starting
		}
	}
	defer conn.Close()
	if _, err := conn.Write(hello); err != nil {
		return nil, err
	}
	return firstFlight(conn)
}

func goServer(cert tls.Certificate, tweak func(*tls.Config)) func(context.Context) (int, func(), error) {
	return func(ctx context.Context) (int, func(), error) {
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		if tweak != nil {
			tweak(cfg)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
		if err != nil {
			return 0, nil, err
		}
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.(*tls.Conn).HandshakeContext(ctx)
			conn.Close()
		}()
		return ln.Addr().(*net.TCPAddr).Port, func() { ln.Close() }, nil
	}
}

func opensslServer(certFile, keyFile string, extra ...string) func(context.Context) (int, func(), error) {
	return func(ctx context.Context) (int, func(), error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, nil, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close() // openssl binds it next
		args := append([]string{"s_server", "-accept", addr(port), "-cert", certFile, "-key", keyFile,
			"-naccept", "1", "-quiet"}, extra...)
		cmd := exec.CommandContext(ctx, "openssl", args...)
		cmd.Stdin = bytes.NewReader(nil)
		if err := cmd.Start(); err != nil {
			return 0, nil, err
		}
		return port, func() { cmd.Process.Kill(); cmd.Wait() }, nil
	}
}

func selfSigned() (certPEM, keyPEM []byte, cert tls.Certificate, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, cert, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: serverName},
		DNSNames:     []string{serverName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, cert, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, cert, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	return certPEM, keyPEM, cert, err
}

func write(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	log.Printf("%s: %d bytes", path, len(b))
	return os.WriteFile(path, b, 0o644)
}

// buildCorpus writes the fuzz seed corpus: every capture, plus hostile
// inputs derived from them.
func buildCorpus() error {
	for _, fz := range []struct{ name, dir string }{
		{"FuzzParseClientHello", "clienthello"},
		{"FuzzParseServerHello", "serverhello"},
	} {
		out := filepath.Join("testdata", "fuzz", fz.name)
		if err := os.RemoveAll(out); err != nil {
			return err
		}
		files, err := filepath.Glob(filepath.Join("testdata", fz.dir, "*.bin"))
		if err != nil {
			return err
		}
		seeds := map[string][]byte{}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			base := filepath.Base(f)
			base = base[:len(base)-len(".bin")]
			seeds[base] = b
		}
		if fz.dir == "clienthello" {
			for name, b := range hostileClientHellos() {
				seeds[name] = b
			}
		} else {
			for name, b := range hostileServerHellos() {
				seeds[name] = b
			}
		}
		for name, b := range seeds {
			text := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := write(filepath.Join(out, name), []byte(text)); err != nil {
				return err
			}
		}
	}
	return nil
}

// hello builds a record holding one handshake message of type typ.
func hello(typ byte, body []byte) []byte {
	msg := append([]byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	rec := []byte{0x16, 0x03, 0x01, 0, 0}
	binary.BigEndian.PutUint16(rec[3:], uint16(len(msg)))
	return append(rec, msg...)
}

func u16(v int) []byte { return []byte{byte(v >> 8), byte(v)} }

func ext(typ int, data []byte) []byte {
	return append(append(u16(typ), u16(len(data))...), data...)
}

// cat joins into a new slice, so that no seed shares another's array.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func vec16(b []byte) []byte { return append(u16(len(b)), b...) }

func clientBody(suites []byte, exts []byte) []byte {
	b := append([]byte{0x03, 0x03}, make([]byte, 32)...) // version, random
	b = append(b, 0)                                     // session id
	b = append(b, vec16(suites)...)
	b = append(b, 1, 0) // null compression
	if exts != nil {
		b = append(b, vec16(exts)...)
	}
	return b
}

func hostileClientHellos() map[string][]byte {
	grease := []byte{0x0a, 0x0a, 0x1a, 0x1a, 0xfa, 0xfa}
	sni := ext(0, vec16(append([]byte{0}, vec16([]byte(serverName))...)))
	alpn := ext(0x10, vec16([]byte("\x02h2")))

	seeds := map[string][]byte{
		// Every list holds GREASE only.
		"grease_only": hello(1, clientBody(grease, bytes.Join([][]byte{
			ext(0x0a0a, nil),
			ext(0x2b, append([]byte{6}, grease...)),
			ext(0x0d, vec16(grease)),
			ext(0x33, vec16(append(u16(0x1a1a), vec16([]byte{0})...))),
		}, nil))),
		// The extensions block claims more than the message holds.
		"extensions_overrun": func() []byte {
			body := clientBody([]byte{0x13, 0x01}, cat(sni, alpn))
			binary.BigEndian.PutUint16(body[len(body)-len(sni)-len(alpn)-2:], 0xfff0)
			return hello(1, body)
		}(),
		// Two extensions whose lengths overlap each other.
		"extension_overlap": func() []byte {
			e := cat(sni, alpn)
			binary.BigEndian.PutUint16(e[2:], uint16(len(sni)+2)) // sni runs into alpn
			return hello(1, clientBody([]byte{0x13, 0x01}, e))
		}(),
		// The handshake header claims 16 MiB.
		"handshake_length_lies": func() []byte {
			b := hello(1, clientBody([]byte{0x13, 0x01}, sni))
			b[6], b[7], b[8] = 0xff, 0xff, 0xff
			return b
		}(),
		// The record claims more than was sent.
		"record_length_lies": func() []byte {
			b := hello(1, clientBody([]byte{0x13, 0x01}, sni))
			binary.BigEndian.PutUint16(b[3:], 0x3fff)
			return b
		}(),
		// A zero-length record, then the hello.
		"empty_record": append([]byte{0x16, 0x03, 0x01, 0, 0}, hello(1, clientBody([]byte{0x13, 0x01}, sni))...),
		// The hello split into one-byte records.
		"one_byte_records": func() []byte {
			msg := hello(1, clientBody([]byte{0x13, 0x01}, cat(sni, alpn)))[5:]
			var out []byte
			for _, c := range msg {
				out = append(out, 0x16, 0x03, 0x01, 0, 1, c)
			}
			return out
		}(),
		// A change_cipher_spec record in the middle of the hello.
		"interleaved_ccs": func() []byte {
			msg := hello(1, clientBody([]byte{0x13, 0x01}, sni))[5:]
			half := len(msg) / 2
			out := append([]byte{0x16, 0x03, 0x01}, u16(half)...)
			out = append(out, msg[:half]...)
			out = append(out, 0x14, 0x03, 0x03, 0, 1, 1)
			out = append(out, 0x16, 0x03, 0x01)
			out = append(out, u16(len(msg)-half)...)
			return append(out, msg[half:]...)
		}(),
		// Odd-length cipher list, session id longer than 32.
		"odd_ciphers":     hello(1, clientBody([]byte{0x13, 0x01, 0x13}, nil)),
		"long_session_id": hello(1, append(append([]byte{3, 3}, make([]byte, 32)...), 200)),
		// ALPN and SNI with inner lengths that lie.
		"inner_lengths_lie": hello(1, clientBody([]byte{0x13, 0x01}, bytes.Join([][]byte{
			ext(0, []byte{0, 5, 0, 0, 200, 'a'}),
			ext(0x10, []byte{0, 3, 9, 'h', '2'}),
			ext(0x2b, []byte{5, 3, 4}),
			ext(0x0d, []byte{0, 3, 4}),
			ext(0x33, []byte{0, 8, 0x11, 0xec, 0x04, 0xc0}),
		}, nil))),
		// A ServerHello where a ClientHello should be; SSLv2; an alert.
		"server_hello": hello(2, clientBody([]byte{0x13, 0x01}, nil)),
		"sslv2":        {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15},
		"alert":        {0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28},
	}
	return seeds
}

func hostileServerHellos() map[string][]byte {
	body := func(exts []byte) []byte {
		b := append([]byte{0x03, 0x03}, make([]byte, 32)...)
		b = append(b, 0, 0x13, 0x01, 0)
		if exts != nil {
			b = append(b, vec16(exts)...)
		}
		return b
	}
	return map[string][]byte{
		"supported_versions_long": hello(2, body(ext(0x2b, []byte{3, 4, 0}))),
		"extensions_overrun":      hello(2, append(body(nil), 0xff, 0xff)),
		"no_extensions":           hello(2, body(nil)),
		"client_hello":            hello(1, body(nil)),
		"cut":                     hello(2, body(ext(0x2b, []byte{3, 4})))[:40],
	}
}
