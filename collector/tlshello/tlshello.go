// Package tlshello parses the first TLS records of a connection as they
// were seen on the wire: the client's ClientHello and the server's
// ServerHello. It never panics, whatever the bytes.
//
// The bytes are what the kernel captured of the first flight: at most a
// few KiB, starting at a TLS record header, possibly spanning several
// records (a hello may be fragmented across records), possibly cut short.
// A ClientHello that is cut short still yields what came before the cut,
// marked Truncated: the server name is near the start and usually survives.
//
// # JA4
//
// ClientHello.JA4 is FoxIO's JA4 client fingerprint, as specified in
// technical_details/JA4.md of github.com/FoxIO-LLC/ja4, in three parts
// joined by '_':
//
//	a: "t"                      TLS over TCP (never QUIC or DTLS here)
//	   version                  the highest supported_versions value, else
//	                            the hello's legacy version: "13", "12",
//	                            "11", "10", "s3", "s2", "s1", DTLS "d1",
//	                            "d2", "d3", anything else "00"
//	   "d" or "i"               server_name extension present or not
//	   two digits               cipher suites, capped at 99
//	   two digits               extensions, SNI and ALPN included, capped
//	   two characters           first and last byte of the first ALPN
//	                            protocol; "00" without one; if either byte
//	                            is not ASCII alphanumeric, the first hex
//	                            digit of the first byte and the last hex
//	                            digit of the last byte
//	b: the first 12 hex digits of the SHA-256 of the cipher suites as
//	   4-digit lower-case hex, sorted, comma-joined; "000000000000" when
//	   there are none
//	c: the same over the extension types sorted, without server_name
//	   (0000) and ALPN (0010), followed by '_' and the signature_algorithms
//	   values in the client's order (no '_' when there are none);
//	   "000000000000" when no extension is left
//
// GREASE values (RFC 8701, 0x?a?a with both bytes equal) are left out of
// every list and count. The fingerprint is only computed when the whole
// extension list was captured: a fingerprint of a partial list would name
// a client that does not exist.
package tlshello

import (
	"crypto/tls"
	"errors"
	"fmt"
)

// ClientHello is what a client's hello says of it.
type ClientHello struct {
	// LegacyVersion is the version field of the hello itself (0x0303 for
	// TLS 1.2 and 1.3 clients).
	LegacyVersion uint16
	// SNI is the server_name the client asked for, as sent; "" when absent.
	SNI string
	// ALPN lists the application protocols offered, in the client's order.
	ALPN []string
	// Versions lists supported_versions in the client's order, GREASE
	// removed; nil when the extension is absent.
	Versions []uint16
	// CipherSuites counts the cipher suites offered, GREASE excluded.
	CipherSuites int
	// ECH says the client sent an encrypted_client_hello extension. Clients
	// that GREASE ECH send one too. With real ECH, SNI is the outer hello's
	// public name, not the server the client is after.
	ECH bool
	// PostQuantum says a key share uses a post-quantum or hybrid group.
	PostQuantum bool
	// JA4 is the JA4 client fingerprint (FoxIO's JA4, part a_b_c); "" when
	// the hello was cut before its last extension.
	JA4 string
	// Truncated says the bytes ended before the hello did: fields after
	// the cut are missing.
	Truncated bool
}

// ServerHello is what the server chose.
type ServerHello struct {
	Version     uint16 // negotiated: supported_versions if present, else the legacy version
	CipherSuite uint16
	// HelloRetry says this is a HelloRetryRequest, not the final choice.
	HelloRetry bool
}

// Errors the parsers wrap, for errors.Is.
var (
	// ErrNotHandshake: the bytes do not start with a TLS handshake record.
	ErrNotHandshake = errors.New("not a TLS handshake record")
	// ErrUnexpectedMessage: the first handshake message is not the hello
	// asked for.
	ErrUnexpectedMessage = errors.New("unexpected handshake message")
	// ErrShort: the bytes end before the hello's fixed-size start (or, for
	// a ServerHello, before its end).
	ErrShort = errors.New("too short")
	// ErrMalformed: lengths or values contradict each other.
	ErrMalformed = errors.New("malformed")
)

// Handshake message types (RFC 8446, section 4).
const (
	typeClientHello = 1
	typeServerHello = 2
)

// Extension types (IANA TLS ExtensionType Values).
const (
	extServerName          = 0x0000
	extSignatureAlgorithms = 0x000d
	extALPN                = 0x0010
	extSupportedVersions   = 0x002b
	extKeyShare            = 0x0033
	extECH                 = 0xfe0d
)

// isGREASE reports whether v is one of the 16 GREASE values of RFC 8701:
// 0x0a0a, 0x1a1a, ... 0xfafa.
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// isPostQuantum reports whether a named group carries a post-quantum KEM,
// alone or in a hybrid. From IANA's TLS Supported Groups registry.
func isPostQuantum(group uint16) bool {
	switch group {
	case 0x0200, // MLKEM512
		0x0201, // MLKEM768
		0x0202, // MLKEM1024
		0x11eb, // SecP256r1MLKEM768
		0x11ec, // X25519MLKEM768
		0x11ed, // SecP384r1MLKEM1024
		0x11ee, // curveSM2MLKEM768
		0x6399, // X25519Kyber768Draft00 (obsolete, still sent by older Chrome and Go)
		0x639a: // SecP256r1Kyber768Draft00 (obsolete)
		return true
	}
	return false
}

// VersionName names a TLS version as the contract does: "1.3", "1.2",
// "1.1", "1.0", "ssl3"; other values as "0x%04x".
func VersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS10:
		return "1.0"
	case 0x0300:
		return "ssl3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// CipherSuiteName names a cipher suite as IANA does
// ("TLS_AES_128_GCM_SHA256"), or "0xABCD" when crypto/tls does not know it.
func CipherSuiteName(id uint16) string {
	return tls.CipherSuiteName(id)
}
