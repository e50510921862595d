package tlshello

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The captures in testdata were recorded by gen_captures.go from real
// clients and servers on this machine's loopback.

func readCapture(tb testing.TB, dir, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", dir, name+".bin"))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// The JA4 values of the captures were checked against a separate
// computation from Wireshark 4.0's (tshark's) dissection of the same bytes.
var clientCaptures = []struct {
	name     string
	sni      string
	alpn     []string
	versions []uint16
	suites   int
	pq       bool
	ja4      string
}{
	{
		// crypto/tls default config: TLS 1.3 with an X25519MLKEM768 share.
		name: "go_pq", sni: "example.test", alpn: []string{"h2", "http/1.1"},
		versions: []uint16{0x0304, 0x0303}, suites: 13, pq: true,
		ja4: "t13d1312h2_f57a46bbacb6_ab7e3b40a677",
	},
	{
		name: "go_tls12", sni: "example.test", alpn: []string{"http/1.1"},
		versions: []uint16{0x0303}, suites: 10,
		ja4: "t12d1011h1_a8cf61a50a39_a92c7c6a82fe",
	},
	{
		// openssl s_client -servername example.test -alpn h2,http/1.1
		name: "openssl", sni: "example.test", alpn: []string{"h2", "http/1.1"},
		versions: []uint16{0x0304, 0x0303, 0x0302, 0x0301}, suites: 31,
		ja4: "t13d3111h2_e8f1e7e78f70_1f22a2ca17c4",
	},
	{
		// openssl s_client -noservername
		name:     "openssl_nosni",
		versions: []uint16{0x0304, 0x0303, 0x0302, 0x0301}, suites: 31,
		ja4: "t13i310900_e8f1e7e78f70_1f22a2ca17c4",
	},
	{
		// openssl s_client -tls1_2: no supported_versions at all.
		name: "openssl_tls12", sni: "example.test", suites: 28,
		ja4: "t12d280700_d943125447b4_e7e480e5a997",
	},
	{
		name: "curl_h2", sni: "example.test", alpn: []string{"h2", "http/1.1"},
		versions: []uint16{0x0304, 0x0303, 0x0302, 0x0301}, suites: 31,
		ja4: "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
	},
}

func TestClientHelloCaptures(t *testing.T) {
	for _, tc := range clientCaptures {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseClientHello(readCapture(t, "clienthello", tc.name))
			if err != nil {
				t.Fatal(err)
			}
			want := &ClientHello{
				LegacyVersion: 0x0303,
				SNI:           tc.sni,
				ALPN:          tc.alpn,
				Versions:      tc.versions,
				CipherSuites:  tc.suites,
				PostQuantum:   tc.pq,
				JA4:           tc.ja4,
			}
			if !reflect.DeepEqual(h, want) {
				t.Errorf("got  %+v\nwant %+v", h, want)
			}
		})
	}
}

// helloEnd returns where the first handshake message of a capture made of
// one record ends.
func helloEnd(tb testing.TB, b []byte) int {
	tb.Helper()
	n := recordHeaderLen + handshakeHeaderLen + (int(b[6])<<16 | int(b[7])<<8 | int(b[8]))
	if int(binary.BigEndian.Uint16(b[3:])) < n-recordHeaderLen {
		tb.Fatalf("the hello spans records")
	}
	return n
}

// TestClientHelloPrefixes cuts each capture at every length: what was
// before the cut is reported, what was after it is not, and the
// fingerprint only comes with the whole hello.
func TestClientHelloPrefixes(t *testing.T) {
	const fixed = recordHeaderLen + handshakeHeaderLen + fixedStart
	for _, tc := range clientCaptures {
		t.Run(tc.name, func(t *testing.T) {
			b := readCapture(t, "clienthello", tc.name)
			full, err := ParseClientHello(b)
			if err != nil {
				t.Fatal(err)
			}
			end := helloEnd(t, b)
			sniEnd := len(b) + 1
			if tc.sni != "" {
				sniEnd = bytes.Index(b, []byte(tc.sni)) + len(tc.sni)
			}
			for n := range len(b) {
				h, err := ParseClientHello(b[:n])
				switch {
				case n < fixed:
					if err == nil || !errors.Is(err, ErrShort) {
						t.Fatalf("%d bytes: got %+v, %v; want ErrShort", n, h, err)
					}
					continue
				case err != nil:
					t.Fatalf("%d bytes: %v", n, err)
				case n >= end:
					if !reflect.DeepEqual(h, full) {
						t.Fatalf("%d bytes: got %+v, want %+v", n, h, full)
					}
					continue
				}
				if !h.Truncated || h.JA4 != "" {
					t.Fatalf("%d bytes: Truncated %v, JA4 %q", n, h.Truncated, h.JA4)
				}
				if n >= sniEnd && h.SNI != tc.sni {
					t.Fatalf("%d bytes: SNI %q, want %q", n, h.SNI, tc.sni)
				}
				// What is reported is what the whole hello says.
				if h.LegacyVersion != full.LegacyVersion ||
					h.SNI != "" && h.SNI != full.SNI ||
					h.ALPN != nil && !reflect.DeepEqual(h.ALPN, full.ALPN) ||
					h.Versions != nil && !reflect.DeepEqual(h.Versions, full.Versions) ||
					h.CipherSuites != 0 && h.CipherSuites != full.CipherSuites ||
					h.PostQuantum && !full.PostQuantum || h.ECH && !full.ECH {
					t.Fatalf("%d bytes: got %+v, whole hello %+v", n, h, full)
				}
			}
		})
	}
}

func TestClientHelloCutInsideKeyShare(t *testing.T) {
	b := readCapture(t, "clienthello", "go_pq")
	// crypto/tls sends key_share last; its X25519MLKEM768 key is 1216
	// bytes, so the group ID survives a cut this close to the end.
	h, err := ParseClientHello(b[:len(b)-100])
	if err != nil {
		t.Fatal(err)
	}
	if !h.Truncated || !h.PostQuantum || h.SNI != "example.test" || h.JA4 != "" {
		t.Errorf("got %+v", h)
	}
}

// refragment splits the first handshake message of a one-record capture
// into records of at most size bytes.
func refragment(tb testing.TB, b []byte, size int) []byte {
	msg := b[recordHeaderLen:helloEnd(tb, b)]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordTypeHandshake, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestClientHelloFragmented(t *testing.T) {
	for _, tc := range clientCaptures {
		b := readCapture(t, "clienthello", tc.name)
		want, err := ParseClientHello(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{1, 2, 3, 4, 5, 37, 100, 511, 1000} {
			f := refragment(t, b, size)
			got, err := ParseClientHello(f)
			if err != nil {
				t.Fatalf("%s in %d-byte records: %v", tc.name, size, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s in %d-byte records: got %+v, want %+v", tc.name, size, got, want)
			}
			// Cut anywhere, it still parses or fails cleanly.
			for n := range len(f) {
				h, err := ParseClientHello(f[:n])
				if err == nil && (!h.Truncated || h.JA4 != "") {
					t.Fatalf("%s in %d-byte records cut at %d: %+v", tc.name, size, n, h)
				}
			}
		}
	}
}

func TestClientHelloTrailingBytes(t *testing.T) {
	b := readCapture(t, "clienthello", "openssl")
	want, err := ParseClientHello(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tail := range [][]byte{
		{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, // change_cipher_spec
		{0x17, 0x03, 0x03, 0xff, 0xff},       // application data, cut
		[]byte("garbage"),
	} {
		got, err := ParseClientHello(append(b[:len(b):len(b)], tail...))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("with % x after: got %+v, %v", tail, got, err)
		}
	}
}

func TestClientHelloErrors(t *testing.T) {
	sni := ext(extServerName, serverNameBody("example.test"))
	valid := func() []byte { return handshake(typeClientHello, clientBody(suites(0x1301), sni)) }

	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"one byte", []byte{0x16}, ErrShort},
		{"record header cut", []byte{0x16, 0x03, 0x01, 0x00}, ErrShort},
		{"handshake header cut", []byte{0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00}, ErrShort},
		{"random cut", valid()[:20], ErrShort},
		{"alert", []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28}, ErrNotHandshake},
		{"sslv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, ErrNotHandshake},
		{"http", []byte("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"), ErrNotHandshake},
		{"record version", []byte{0x16, 0x02, 0x00, 0x00, 0x04, 0x01, 0, 0, 0}, ErrNotHandshake},
		{"server hello", readCapture(t, "serverhello", "go_tls13"), ErrUnexpectedMessage},
		{"empty record", append([]byte{0x16, 0x03, 0x01, 0, 0}, valid()...), ErrMalformed},
		{"record too long", func() []byte {
			b := valid()
			binary.BigEndian.PutUint16(b[3:], maxPlaintext+1)
			return b
		}(), ErrMalformed},
		{"alert inside the hello", func() []byte {
			b := refragment(t, valid(), 20)
			return append(b[:25:25], append([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}, b[25:]...)...)
		}(), ErrMalformed},
		{"hello shorter than its fixed start", handshake(typeClientHello, make([]byte, 20)), ErrMalformed},
		{"session id of 33", handshake(typeClientHello, append(append([]byte{3, 3}, make([]byte, 32)...), append([]byte{33}, make([]byte, 40)...)...)), ErrMalformed},
		{"odd cipher list", handshake(typeClientHello, clientBody([]byte{0x13, 0x01, 0x13}, nil)), ErrMalformed},
		{"cipher list past the hello", func() []byte {
			body := clientBody(suites(0x1301), nil)
			body[fixedStart+1] = 0xff // session id is empty: the cipher length follows
			return handshake(typeClientHello, body)
		}(), ErrMalformed},
		{"extensions past the hello", func() []byte {
			body := clientBody(suites(0x1301), sni)
			binary.BigEndian.PutUint16(body[len(body)-len(sni)-2:], uint16(len(sni)+1))
			return handshake(typeClientHello, body)
		}(), ErrMalformed},
		{"bytes after the extensions", handshake(typeClientHello, append(clientBody(suites(0x1301), sni), 0)), ErrMalformed},
		{"extension past the block", handshake(typeClientHello, clientBody(suites(0x1301),
			append(append([]byte{}, sni...), 0x00, 0x10, 0x00, 0x09, 0x00))), ErrMalformed},
		{"half an extension header", handshake(typeClientHello, clientBody(suites(0x1301), append(append([]byte{}, sni...), 0x00))), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseClientHello(tc.b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %+v, %v; want %v", h, err, tc.want)
			}
			if h != nil {
				t.Fatalf("got %+v with the error", h)
			}
			if !strings.HasPrefix(err.Error(), "tlshello: client hello: ") {
				t.Errorf("error %q lacks its context", err)
			}
		})
	}
}

// An extension whose contents do not parse costs only what it would have
// said.
func TestClientHelloBadExtensionContents(t *testing.T) {
	exts := bytes.Join([][]byte{
		ext(extServerName, []byte{0x00, 0x05, 0x00, 0x00, 0xc8, 'a'}),
		ext(extALPN, []byte{0x00, 0x03, 0x09, 'h', '2'}),
		ext(extSupportedVersions, []byte{0x05, 0x03, 0x04}),
		ext(extSignatureAlgorithms, []byte{0x00, 0x03, 0x04}),
		ext(extKeyShare, []byte{0x00, 0x04, 0x11, 0xec, 0x04, 0xc0}),
	}, nil)
	h, err := ParseClientHello(handshake(typeClientHello, clientBody(suites(0x1301), exts)))
	if err != nil {
		t.Fatal(err)
	}
	if h.SNI != "" || h.ALPN != nil || len(h.Versions) != 0 || h.Versions == nil || h.PostQuantum || h.Truncated {
		t.Errorf("got %+v", h)
	}
	if !strings.HasPrefix(h.JA4, "t00d0105") {
		t.Errorf("JA4 %q", h.JA4)
	}
}

func TestClientHelloECHAndGREASE(t *testing.T) {
	exts := bytes.Join([][]byte{
		ext(0x0a0a, nil),
		ext(extServerName, serverNameBody("public.example")),
		ext(extSupportedVersions, []byte{6, 0x7a, 0x7a, 0x03, 0x04, 0x03, 0x03}),
		ext(extKeyShare, vec16(bytes.Join([][]byte{u16(0x2a2a), vec16([]byte{0}), u16(0x001d), vec16(make([]byte, 32))}, nil))),
		ext(extECH, []byte{0, 1, 2, 3}),
		ext(0xfafa, []byte{0}),
	}, nil)
	h, err := ParseClientHello(handshake(typeClientHello, clientBody(suites(0xdada, 0x1301, 0x1302), exts)))
	if err != nil {
		t.Fatal(err)
	}
	want := &ClientHello{
		LegacyVersion: 0x0303, SNI: "public.example", Versions: []uint16{0x0304, 0x0303},
		CipherSuites: 2, ECH: true, JA4: h.JA4,
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %+v\nwant %+v", h, want)
	}
	if !strings.HasPrefix(h.JA4, "t13d020400_") {
		t.Errorf("JA4 %q", h.JA4)
	}
}

func TestClientHelloNoExtensions(t *testing.T) {
	h, err := ParseClientHello(handshake(typeClientHello, clientBody(suites(0x002f, 0x0035), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if h.Versions != nil || h.Truncated || h.JA4 != "t12i020000_"+hash12("002f,0035")+"_000000000000" {
		t.Errorf("got %+v", h)
	}
}

var serverCaptures = []struct {
	name    string
	version uint16
	suite   uint16
	retry   bool
}{
	{"go_tls13", 0x0304, 0x1301, false},
	{"go_tls12", 0x0303, 0xc02b, false},
	{"go_hrr", 0x0304, 0x1301, true},
	{"openssl_tls13", 0x0304, 0x1301, false},
	{"openssl_tls12", 0x0303, 0xc02b, false},
}

func TestServerHelloCaptures(t *testing.T) {
	for _, tc := range serverCaptures {
		t.Run(tc.name, func(t *testing.T) {
			b := readCapture(t, "serverhello", tc.name)
			sh, err := ParseServerHello(b)
			if err != nil {
				t.Fatal(err)
			}
			want := &ServerHello{Version: tc.version, CipherSuite: tc.suite, HelloRetry: tc.retry}
			if *sh != *want {
				t.Errorf("got %+v, want %+v", sh, want)
			}

			end := helloEnd(t, b)
			for n := range len(b) {
				sh, err := ParseServerHello(b[:n])
				if n < end {
					if !errors.Is(err, ErrShort) {
						t.Fatalf("%d bytes: got %+v, %v; want ErrShort", n, sh, err)
					}
				} else if err != nil || *sh != *want {
					t.Fatalf("%d bytes: got %+v, %v", n, sh, err)
				}
			}
			for _, size := range []int{1, 3, 50} {
				sh, err := ParseServerHello(refragment(t, b, size))
				if err != nil || *sh != *want {
					t.Fatalf("in %d-byte records: got %+v, %v", size, sh, err)
				}
			}
		})
	}
}

func TestServerHelloErrors(t *testing.T) {
	body := func(exts []byte) []byte {
		b := append([]byte{0x03, 0x03}, make([]byte, 32)...)
		b = append(b, 0, 0x13, 0x01, 0)
		if exts != nil {
			b = append(b, vec16(exts)...)
		}
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"alert", []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46}, ErrNotHandshake},
		{"client hello", readCapture(t, "clienthello", "openssl"), ErrUnexpectedMessage},
		{"too short a body", handshake(typeServerHello, make([]byte, 30)), ErrMalformed},
		{"long supported_versions", handshake(typeServerHello, body(ext(extSupportedVersions, []byte{3, 4, 0}))), ErrMalformed},
		{"extensions past the hello", handshake(typeServerHello, append(body(nil), 0x00, 0x09, 0x00)), ErrMalformed},
		{"bytes after the extensions", handshake(typeServerHello, append(body(ext(extSupportedVersions, []byte{3, 4})), 0)), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sh, err := ParseServerHello(tc.b)
			if !errors.Is(err, tc.want) || sh != nil {
				t.Fatalf("got %+v, %v; want %v", sh, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "tlshello: server hello: ") {
				t.Errorf("error %q lacks its context", err)
			}
		})
	}

	// Without extensions, the legacy version is the negotiated one.
	sh, err := ParseServerHello(handshake(typeServerHello, body(nil)))
	if err != nil || *sh != (ServerHello{Version: 0x0303, CipherSuite: 0x1301}) {
		t.Errorf("no extensions: got %+v, %v", sh, err)
	}
}

func TestVersionName(t *testing.T) {
	for v, want := range map[uint16]string{
		0x0304: "1.3", 0x0303: "1.2", 0x0302: "1.1", 0x0301: "1.0", 0x0300: "ssl3",
		0x7f1c: "0x7f1c", 0x0a0a: "0x0a0a", 0: "0x0000",
	} {
		if got := VersionName(v); got != want {
			t.Errorf("VersionName(%#04x) = %q, want %q", v, got, want)
		}
	}
}

func TestCipherSuiteName(t *testing.T) {
	for id, want := range map[uint16]string{
		0x1301: "TLS_AES_128_GCM_SHA256",
		0xc02b: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
		0xcca9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
		0x0a0a: "0x0A0A",
	} {
		if got := CipherSuiteName(id); got != want {
			t.Errorf("CipherSuiteName(%#04x) = %q, want %q", id, got, want)
		}
	}
}

func TestIsGREASE(t *testing.T) {
	n := 0
	for v := range 1 << 16 {
		if isGREASE(uint16(v)) {
			n++
			if v&0x0f0f != 0x0a0a || v>>8 != v&0xff {
				t.Errorf("%#04x is not GREASE", v)
			}
		}
	}
	if n != 16 {
		t.Errorf("%d GREASE values, want 16", n)
	}
}

func BenchmarkParseClientHello(b *testing.B) {
	hello := readCapture(b, "clienthello", "go_pq")
	b.ReportAllocs()
	b.SetBytes(int64(len(hello)))
	for b.Loop() {
		if _, err := ParseClientHello(hello); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseServerHello(b *testing.B) {
	hello := readCapture(b, "serverhello", "go_tls13")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseServerHello(hello); err != nil {
			b.Fatal(err)
		}
	}
}

// Builders of hand-made hellos.

func u16(v int) []byte { return []byte{byte(v >> 8), byte(v)} }

func vec16(b []byte) []byte { return append(u16(len(b)), b...) }

func ext(typ int, data []byte) []byte {
	return bytes.Join([][]byte{u16(typ), vec16(data)}, nil)
}

func suites(ids ...int) []byte {
	var b []byte
	for _, id := range ids {
		b = append(b, u16(id)...)
	}
	return b
}

func serverNameBody(name string) []byte {
	return vec16(append([]byte{0}, vec16([]byte(name))...))
}

// clientBody builds a ClientHello body; exts nil leaves the extensions
// out altogether.
func clientBody(suites, exts []byte) []byte {
	b := append([]byte{0x03, 0x03}, make([]byte, 32)...) // legacy_version, random
	b = append(b, 0)                                     // session id
	b = append(b, vec16(suites)...)
	b = append(b, 1, 0) // compression: null
	if exts != nil {
		b = append(b, vec16(exts)...)
	}
	return b
}

// handshake wraps a message body in its handshake header and one record.
func handshake(typ byte, body []byte) []byte {
	n := len(body) + handshakeHeaderLen
	b := []byte{recordTypeHandshake, 0x03, 0x01, byte(n >> 8), byte(n), typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	return append(b, body...)
}
