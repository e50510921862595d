package tlshello

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func hash12(s string) string { return string(appendHash12(nil, []byte(s))) }

// ja4Raw returns JA4_r, the fingerprint before hashing, of the hello in b.
func ja4Raw(tb testing.TB, b []byte) string {
	tb.Helper()
	var room listRoom
	h, fp, err := parseClientHello(b, &room)
	if err != nil || h.Truncated {
		tb.Fatalf("%+v, %v", h, err)
	}
	a, partB, partC := fp.parts(h, nil)
	return string(a[:]) + "_" + string(partB) + "_" + string(partC)
}

// specHello builds the ClientHello of the example in FoxIO's JA4 spec
// (technical_details/JA4.md, "Example" and "Raw Output"; the same inputs
// are the test vector of the reference implementation, rust/ja4/src/tls.rs
// test_client_stats_into_out): its cipher suites and extensions in the
// spec's order, SNI, ALPN h2, TLS 1.3 and its signature algorithms. With
// grease set, GREASE values are mixed into every list, which must not
// change the fingerprint.
func specHello(grease bool, sigAlgs []int) []byte {
	ciphers := []int{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035}
	versions := []int{0x0304, 0x0303}
	if grease {
		ciphers = append([]int{0x0a0a}, append(ciphers[:7:7], append([]int{0x8a8a}, ciphers[7:]...)...)...)
		versions = append([]int{0x3a3a}, versions...)
		sigAlgs = append([]int{0xcaca}, append(sigAlgs[:3:3], append([]int{0x9a9a}, sigAlgs[3:]...)...)...)
	}
	var exts [][]byte
	if grease {
		exts = append(exts, ext(0x1a1a, nil))
	}
	for _, typ := range []int{0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015} {
		var data []byte
		switch typ {
		case extServerName:
			data = serverNameBody("example.com")
		case extALPN:
			data = vec16([]byte("\x02h2\x08http/1.1"))
		case extSignatureAlgorithms:
			data = vec16(suites(sigAlgs...))
		case extSupportedVersions:
			v := suites(versions...)
			data = append([]byte{byte(len(v))}, v...)
		}
		exts = append(exts, ext(typ, data))
	}
	if grease {
		exts = append(exts, ext(0xfafa, []byte{0}))
	}
	return handshake(typeClientHello, clientBody(suites(ciphers...), bytes.Join(exts, nil)))
}

var specSigAlgs = []int{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}

func TestJA4SpecExample(t *testing.T) {
	const (
		want    = "t13d1516h2_8daaf6152771_e5627efa2ab1"
		wantRaw = "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
	)
	for _, grease := range []bool{false, true} {
		b := specHello(grease, specSigAlgs)
		h, err := ParseClientHello(b)
		if err != nil {
			t.Fatal(err)
		}
		if h.JA4 != want {
			t.Errorf("grease %v: JA4 %q, want %q", grease, h.JA4, want)
		}
		if raw := ja4Raw(t, b); raw != wantRaw {
			t.Errorf("grease %v: JA4_r\n%s, want\n%s", grease, raw, wantRaw)
		}
		if h.CipherSuites != 15 || h.SNI != "example.com" {
			t.Errorf("grease %v: %+v", grease, h)
		}
	}
}

// The spec's "no signature algorithms" example: the list ends without an
// underscore, "0005,...,ff01 = 6d807ffa2a79".
func TestJA4NoSignatureAlgorithms(t *testing.T) {
	h, err := ParseClientHello(specHello(false, nil))
	if err != nil {
		t.Fatal(err)
	}
	if want := "t13d1516h2_8daaf6152771_6d807ffa2a79"; h.JA4 != want {
		t.Errorf("JA4 %q, want %q", h.JA4, want)
	}
}

func TestJA4EmptyLists(t *testing.T) {
	// Only GREASE cipher suites, and only SNI and ALPN for extensions:
	// both hashed lists are empty.
	exts := bytes.Join([][]byte{
		ext(extServerName, serverNameBody("example.test")),
		ext(extALPN, vec16([]byte("\x08http/1.1"))),
	}, nil)
	h, err := ParseClientHello(handshake(typeClientHello, clientBody(suites(0x0a0a, 0xfafa), exts)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "t12d0002h1_000000000000_000000000000"; h.JA4 != want {
		t.Errorf("JA4 %q, want %q", h.JA4, want)
	}
}

func TestJA4CountsCapped(t *testing.T) {
	ids := make([]int, 0, 120)
	for i := range 120 {
		ids = append(ids, 0x0100+i)
	}
	var exts [][]byte
	for i := range 120 {
		exts = append(exts, ext(0x4000+i, nil))
	}
	h, err := ParseClientHello(handshake(typeClientHello, clientBody(suites(ids...), bytes.Join(exts, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h.JA4, "t12i999900_") || h.CipherSuites != 120 {
		t.Errorf("got %+v", h)
	}
}

func TestJA4Version(t *testing.T) {
	for _, tc := range []struct {
		legacy   uint16
		versions []uint16 // nil: no supported_versions
		want     string
	}{
		{0x0303, nil, "12"},
		{0x0301, nil, "10"},
		{0x0300, nil, "s3"},
		{0x0002, nil, "s2"},
		{0x0200, nil, "s2"},
		{0x0100, nil, "s1"},
		{0x0303, []uint16{0x0303, 0x0304}, "13"}, // the highest, wherever it is
		{0x0303, []uint16{0x0302}, "11"},
		{0x0303, []uint16{}, "00"}, // the extension is there: it rules
		{0x0303, []uint16{0x7f1c}, "00"},
		{0xfefd, nil, "d2"},
	} {
		ch := ClientHello{LegacyVersion: tc.legacy, Versions: tc.versions}
		if got := ja4Version(ch.MaxVersion()); got != tc.want {
			t.Errorf("legacy %#04x, supported %x: %q, want %q", tc.legacy, tc.versions, got, tc.want)
		}
	}
}

// The spec's examples of ALPN values that are not alphanumeric.
func TestJA4ALPN(t *testing.T) {
	for _, tc := range []struct{ p, want string }{
		{"", "00"},
		{"h2", "h2"},
		{"http/1.1", "h1"},
		{"h", "hh"},
		{"\xab", "ab"},
		{"\xab\xcd", "ad"},
		{"\x30\xab", "3b"},
		{"\x30\x31\xab\xcd", "3d"},
		{"\x30\xab\xcd\x31", "01"},
		{"h2/", "6f"},
	} {
		f, l := alpnChars(tc.p)
		if got := string([]byte{f, l}); got != tc.want {
			t.Errorf("alpnChars(%q) = %q, want %q", tc.p, got, tc.want)
		}
	}
	// An empty first protocol gives "00" even with others after it.
	var fp fingerprint
	if a, _, _ := fp.parts(&ClientHello{ALPN: []string{"", "h2"}}, nil); string(a[8:]) != "00" {
		t.Errorf("empty first protocol: %q", a[8:])
	}
}

func ExampleParseClientHello() {
	h, err := ParseClientHello(specHello(true, specSigAlgs))
	if err != nil {
		panic(err)
	}
	fmt.Println(h.SNI, h.ALPN, h.JA4)
	// Output: example.com [h2 http/1.1] t13d1516h2_8daaf6152771_e5627efa2ab1
}
