package tlshello

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// fixedStart is the part of a ClientHello body before its first vector:
// legacy_version and random.
const fixedStart = 2 + 32

// ParseClientHello parses b, the bytes a client sent first, starting with
// a TLS record header.
//
// When b ends inside the hello, it returns what came before the cut with
// Truncated set and no error, provided the record header and the hello's
// fixed-size start (version and random) are there. It returns an error,
// wrapping one of the package's Err values, for anything that is not a
// TLS ClientHello or whose lengths contradict each other.
func ParseClientHello(b []byte) (*ClientHello, error) {
	var room listRoom
	ch, fp, err := parseClientHello(b, &room)
	if err == nil && !ch.Truncated {
		ch.JA4 = fp.ja4(ch)
	}
	return ch, err
}

// parseClientHello is ParseClientHello short of rendering the JA4: it
// returns the fingerprint of a whole hello instead, which JA4 and its raw
// form (JA4_r) are both made from. The fingerprint's lists are in room
// where they fit.
func parseClientHello(b []byte, room *listRoom) (*ClientHello, fingerprint, error) {
	c, err := readHandshake(b, typeClientHello)
	if err != nil {
		return nil, fingerprint{}, fmt.Errorf("tlshello: client hello: %w", err)
	}
	if c.left < fixedStart {
		return nil, fingerprint{}, fmt.Errorf("tlshello: client hello: length %d: %w", c.left, ErrMalformed)
	}
	if len(c.s) < fixedStart {
		return nil, fingerprint{}, fmt.Errorf("tlshello: client hello: %w", ErrShort)
	}

	var (
		ch ClientHello
		fp fingerprint
	)
	ch.LegacyVersion, _ = c.uint16()
	_ = c.skip(32) // random

	// stop ends the parse at a field that could not be read: cut by the
	// capture (the hello so far is returned) or malformed.
	stop := func(field string, err error) (*ClientHello, fingerprint, error) {
		if errors.Is(err, errCut) {
			ch.Truncated = true
			return &ch, fingerprint{}, nil
		}
		return nil, fingerprint{}, fmt.Errorf("tlshello: client hello: %s: %w", field, err)
	}

	sessionID, err := c.vector(1)
	if err != nil {
		return stop("session id", err)
	}
	if sessionID.left > 32 {
		return stop("session id", fmt.Errorf("length %d: %w", sessionID.left, ErrMalformed))
	}
	if sessionID.cut() {
		return stop("session id", errCut)
	}

	suites, err := c.vector(2)
	if err != nil {
		return stop("cipher suites", err)
	}
	if suites.left%2 != 0 {
		return stop("cipher suites", fmt.Errorf("odd length %d: %w", suites.left, ErrMalformed))
	}
	if suites.cut() {
		// A partial count would understate what the client offers.
		return stop("cipher suites", errCut)
	}
	fp.ciphers = room.ciphers[:0]
	for !suites.s.Empty() {
		var id uint16
		suites.s.ReadUint16(&id)
		if !isGREASE(id) {
			fp.ciphers = append(fp.ciphers, id)
		}
	}
	ch.CipherSuites = len(fp.ciphers)

	compression, err := c.vector(1)
	if err != nil {
		return stop("compression methods", err)
	}
	if compression.cut() {
		return stop("compression methods", errCut)
	}

	if c.left == 0 {
		// No extensions at all, as before TLS 1.2 it was allowed.
		return &ch, fp, nil
	}
	exts, err := c.vector(2)
	if err != nil {
		return stop("extensions", err)
	}
	if c.left != 0 {
		return stop("extensions", fmt.Errorf("%d bytes after them: %w", c.left, ErrMalformed))
	}
	fp.exts = room.exts[:0]
	for exts.left > 0 {
		typ, err := exts.uint16()
		if err != nil {
			return stop("extensions", err)
		}
		data, err := exts.vector(2)
		if err != nil {
			return stop(fmt.Sprintf("extension 0x%04x", typ), err)
		}
		if !isGREASE(typ) {
			fp.exts = append(fp.exts, typ)
		}
		if typ == extKeyShare {
			// Its group comes before the key: a cut share still says it.
			ch.PostQuantum = ch.PostQuantum || keySharePostQuantum(data)
		}
		if data.cut() {
			return stop(fmt.Sprintf("extension 0x%04x", typ), errCut)
		}
		if typ == extSignatureAlgorithms && !fp.sigAlgsSeen {
			// Here, not in extension: room must not be stored
			// through a pointer, or it would leave the stack.
			fp.sigAlgsSeen = true
			fp.sigAlgs = signatureAlgorithms(room.sigAlgs[:0], data.s)
		}
		ch.extension(typ, data.s, &fp)
	}
	return &ch, fp, nil
}

// extension reads what the hello reports of one whole extension. An
// extension whose contents do not parse is counted (its type is in the
// fingerprint) but reports nothing: a server would refuse the hello, yet
// the client that sent it is still worth telling. The first of repeated
// extensions wins.
func (ch *ClientHello) extension(typ uint16, data cryptobyte.String, fp *fingerprint) {
	switch typ {
	case extServerName:
		fp.sni = true
		if ch.SNI == "" {
			ch.SNI = serverName(data)
		}
	case extALPN:
		// protocols may give nil, which would let a later ALPN
		// extension win.
		if !fp.alpnSeen {
			fp.alpnSeen = true
			ch.ALPN = protocols(data)
		}
	case extSupportedVersions:
		// versions never gives nil: a seen extension is told by it.
		if ch.Versions == nil {
			ch.Versions = versions(data)
		}
	case extECH:
		ch.ECH = true
	}
}

// serverName returns the first host_name of a server_name extension
// (RFC 6066, section 3).
func serverName(data cryptobyte.String) string {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() {
		return ""
	}
	for !list.Empty() {
		var (
			nameType uint8
			name     cryptobyte.String
		)
		if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) {
			return ""
		}
		if nameType == 0 && len(name) > 0 {
			return string(name)
		}
	}
	return ""
}

// protocols returns the protocol names of an ALPN extension (RFC 7301,
// section 3.1), or nil unless the whole list parses.
func protocols(data cryptobyte.String) []string {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() {
		return nil
	}
	n := 0
	for l := list; !l.Empty(); n++ {
		var p cryptobyte.String
		if !l.ReadUint8LengthPrefixed(&p) {
			return nil
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	for !list.Empty() {
		var p cryptobyte.String
		list.ReadUint8LengthPrefixed(&p)
		out = append(out, string(p))
	}
	return out
}

// versions returns a supported_versions list (RFC 8446, section 4.2.1)
// without GREASE; empty, not nil, when nothing is left.
func versions(data cryptobyte.String) []uint16 {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list)%2 != 0 {
		return []uint16{}
	}
	return appendNonGREASE(make([]uint16, 0, len(list)/2), list)
}

// signatureAlgorithms appends to dst a signature_algorithms list (RFC
// 8446, section 4.2.3) without GREASE, in the client's order.
func signatureAlgorithms(dst []uint16, data cryptobyte.String) []uint16 {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || len(list)%2 != 0 {
		return dst
	}
	return appendNonGREASE(dst, list)
}

// appendNonGREASE appends the 16-bit values of list, an even number of
// bytes, but GREASE ones.
func appendNonGREASE(dst []uint16, list cryptobyte.String) []uint16 {
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		if !isGREASE(v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// keySharePostQuantum reports whether a client's key_share (RFC 8446,
// section 4.2.8) offers a post-quantum group, reading as far as the
// capture goes. Shares that do not parse say nothing.
func keySharePostQuantum(data cursor) bool {
	shares, err := data.vector(2)
	if err != nil {
		return false
	}
	found := false
	for shares.left > 0 && err == nil {
		var group uint16
		if group, err = shares.uint16(); err == nil {
			found = found || isPostQuantum(group)
			_, err = shares.vector(2)
		}
	}
	if err != nil && !errors.Is(err, errCut) {
		return false
	}
	return found
}
