package tlshello

import (
	"errors"
	"reflect"
	"regexp"
	"testing"
)

// The seed corpora in testdata/fuzz are the captures plus hostile inputs
// (lengths that lie, overlapping extensions, GREASE-only lists), written
// by gen_captures.go.

var ja4Shape = regexp.MustCompile(`^t(13|12|11|10|s3|s2|s1|d1|d2|d3|00)[di][0-9]{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$`)

// knownError reports whether err is one the package documents.
func knownError(err error) bool {
	if errors.Is(err, errCut) {
		return false // cuts are Truncated hellos, never errors
	}
	for _, e := range []error{ErrNotHandshake, ErrUnexpectedMessage, ErrShort, ErrMalformed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func FuzzParseClientHello(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		if err != nil {
			if h != nil || !knownError(err) {
				t.Fatalf("got %+v, %v", h, err)
			}
			return
		}
		if h.Truncated != (h.JA4 == "") {
			t.Fatalf("Truncated %v with JA4 %q", h.Truncated, h.JA4)
		}
		if h.JA4 != "" && !ja4Shape.MatchString(h.JA4) {
			t.Fatalf("JA4 %q", h.JA4)
		}
		if h.CipherSuites > len(b)/2 || len(h.ALPN) > len(b) || len(h.SNI) > len(b) {
			t.Fatalf("more than was sent: %+v", h)
		}
		for _, v := range h.Versions {
			if isGREASE(v) {
				t.Fatalf("GREASE version in %x", h.Versions)
			}
		}
		if h.Truncated {
			return
		}
		// A whole hello does not depend on what follows it.
		h2, err := ParseClientHello(append(b[:len(b):len(b)], 0x16, 0x03, 0x01, 0xff))
		if err != nil || !reflect.DeepEqual(h, h2) {
			t.Fatalf("with bytes after it: got %+v, %v; want %+v", h2, err, h)
		}
	})
}

func FuzzParseServerHello(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		sh, err := ParseServerHello(b)
		if err != nil {
			if sh != nil || !knownError(err) {
				t.Fatalf("got %+v, %v", sh, err)
			}
			return
		}
		sh2, err := ParseServerHello(append(b[:len(b):len(b)], 0x14, 0x03, 0x03))
		if err != nil || *sh2 != *sh {
			t.Fatalf("with bytes after it: got %+v, %v; want %+v", sh2, err, sh)
		}
	})
}
