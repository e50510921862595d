package tlshello

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
)

// fingerprint gathers what JA4 needs of a ClientHello beyond what the
// ClientHello itself holds, GREASE removed, in the client's order.
type fingerprint struct {
	ciphers []uint16
	exts    []uint16
	sigAlgs []uint16
	sni     bool

	alpnSeen    bool
	sigAlgsSeen bool
}

// listRoom is room for a fingerprint's lists in common hellos, so that
// only the hello's own fields are allocated. It stays in the caller's
// frame: a fingerprint is returned by value, and one holding its own
// arrays would have to leave the stack.
type listRoom struct {
	ciphers [64]uint16
	exts    [32]uint16
	sigAlgs [32]uint16
}

// ja4 renders the fingerprint of ch as the package doc describes.
func (fp *fingerprint) ja4(ch *ClientHello) string {
	var scratch [1024]byte
	a, b, c := fp.parts(ch, scratch[:0])
	out := make([]byte, 0, len(a)+1+12+1+12)
	out = append(out, a[:]...)
	out = append(out, '_')
	out = appendHash12(out, b)
	out = append(out, '_')
	out = appendHash12(out, c)
	return string(out)
}

// parts returns part a and the strings that parts b and c are hashes of
// (JA4_r, the "raw" fingerprint, joins them unhashed), written to buf.
func (fp *fingerprint) parts(ch *ClientHello, buf []byte) (a [10]byte, b, c []byte) {
	a[0] = 't'
	v := ja4Version(ch.MaxVersion())
	a[1], a[2] = v[0], v[1]
	a[3] = 'i'
	if fp.sni {
		a[3] = 'd'
	}
	a[4], a[5] = twoDigits(len(fp.ciphers))
	a[6], a[7] = twoDigits(len(fp.exts))
	var first string
	if len(ch.ALPN) > 0 {
		first = ch.ALPN[0]
	}
	a[8], a[9] = alpnChars(first)

	var sortBuf [64]uint16
	sorted := append(sortBuf[:0], fp.ciphers...)
	slices.Sort(sorted)
	buf = appendHexList(buf, sorted)
	b = buf

	sorted = sorted[:0]
	for _, e := range fp.exts {
		if e != extServerName && e != extALPN {
			sorted = append(sorted, e)
		}
	}
	if len(sorted) == 0 {
		return a, b, nil
	}
	slices.Sort(sorted)
	start := len(buf)
	buf = appendHexList(buf, sorted)
	if len(fp.sigAlgs) > 0 {
		buf = append(buf, '_')
		buf = appendHexList(buf, fp.sigAlgs)
	}
	return a, b, buf[start:]
}

// MaxVersion is the highest version the client offers: the highest
// supported_versions value when the extension is there (it never parses
// to nil), else the legacy version.
func (ch *ClientHello) MaxVersion() uint16 {
	if ch.Versions == nil {
		return ch.LegacyVersion
	}
	var v uint16
	for _, x := range ch.Versions {
		v = max(v, x)
	}
	return v
}

func ja4Version(v uint16) string {
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002, 0x0200:
		// The spec names SSL 2.0 0x0002, its implementations 0x0200.
		return "s2"
	case 0x0100:
		return "s1"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

func twoDigits(n int) (byte, byte) {
	n = min(n, 99)
	return byte('0' + n/10), byte('0' + n%10)
}

const hexDigits = "0123456789abcdef"

// alpnChars returns the first and last byte of an ALPN protocol name, or
// when either is not ASCII alphanumeric, the first hex digit of the first
// byte and the last hex digit of the last.
func alpnChars(p string) (byte, byte) {
	if p == "" {
		return '0', '0'
	}
	first, last := p[0], p[len(p)-1]
	if isAlnum(first) && isAlnum(last) {
		return first, last
	}
	return hexDigits[first>>4], hexDigits[last&0x0f]
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

func appendHexList(dst []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
	}
	return dst
}

// appendHash12 appends the first 12 hex digits of the SHA-256 of s, or
// twelve zeros for an empty s: the spec marks an empty list so rather
// than by the hash of nothing.
func appendHash12(dst, s []byte) []byte {
	if len(s) == 0 {
		return append(dst, "000000000000"...)
	}
	sum := sha256.Sum256(s)
	return hex.AppendEncode(dst, sum[:6])
}
