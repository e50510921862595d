package tlshello

import (
	"bytes"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// helloRetryRandom is the random of a HelloRetryRequest: SHA-256 of
// "HelloRetryRequest" (RFC 8446, section 4.1.3).
var helloRetryRandom = []byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// ParseServerHello parses b, the bytes a server sent first, starting with
// a TLS record header. Unlike a ClientHello, a ServerHello is small and is
// only of use whole: one that b cuts short is an error (ErrShort), since
// the version it negotiated is in its last part.
func ParseServerHello(b []byte) (*ServerHello, error) {
	c, err := readHandshake(b, typeServerHello)
	if err != nil {
		return nil, fmt.Errorf("tlshello: server hello: %w", err)
	}
	if c.cut() {
		return nil, fmt.Errorf("tlshello: server hello: %w", ErrShort)
	}
	s := c.s

	var (
		sh        ServerHello
		random    []byte
		sessionID cryptobyte.String
		method    uint8
	)
	if !s.ReadUint16(&sh.Version) || !s.ReadBytes(&random, 32) ||
		!s.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32 ||
		!s.ReadUint16(&sh.CipherSuite) || !s.ReadUint8(&method) {
		return nil, fmt.Errorf("tlshello: server hello: %w", ErrMalformed)
	}
	sh.HelloRetry = bytes.Equal(random, helloRetryRandom)
	if s.Empty() {
		return &sh, nil // no extensions
	}

	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return nil, fmt.Errorf("tlshello: server hello: extensions: %w", ErrMalformed)
	}
	selected := false
	for !exts.Empty() {
		var (
			typ  uint16
			data cryptobyte.String
		)
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return nil, fmt.Errorf("tlshello: server hello: extensions: %w", ErrMalformed)
		}
		if typ != extSupportedVersions || selected {
			continue
		}
		// A server names the one version it chose.
		if !data.ReadUint16(&sh.Version) || !data.Empty() {
			return nil, fmt.Errorf("tlshello: server hello: supported_versions: %w", ErrMalformed)
		}
		selected = true
	}
	return &sh, nil
}
