// Package tlshello parses the first TLS records of a connection as they
// were seen on the wire: the client's ClientHello and the server's
// ServerHello. It never panics, whatever the bytes.
package tlshello

import "errors"

// ClientHello is what a client's hello says of it.
type ClientHello struct {
	// LegacyVersion is the version field of the hello itself (0x0303 for
	// TLS 1.2 and 1.3 clients).
	LegacyVersion uint16
	// SNI is the server_name the client asked for; "" when absent.
	SNI string
	// ALPN lists the application protocols offered, in the client's order.
	ALPN []string
	// Versions lists supported_versions in the client's order, GREASE
	// removed; nil when the extension is absent.
	Versions []uint16
	// CipherSuites counts the cipher suites offered, GREASE excluded.
	CipherSuites int
	// ECH says the client sent an encrypted_client_hello extension.
	ECH bool
	// PostQuantum says a key share uses a post-quantum hybrid group.
	PostQuantum bool
	// JA4 is the JA4 client fingerprint (FoxIO's JA4, part a_b_c).
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

var errNotImplemented = errors.New("tlshello: not implemented")

// ParseClientHello parses b, the bytes a client sent first, starting with
// a TLS record header.
func ParseClientHello(b []byte) (*ClientHello, error) { return nil, errNotImplemented }

// ParseServerHello parses b, the bytes a server sent first.
func ParseServerHello(b []byte) (*ServerHello, error) { return nil, errNotImplemented }

// VersionName names a TLS version as the contract does: "1.3", "1.2",
// "1.1", "1.0", "ssl3"; other values as "0x%04x".
func VersionName(v uint16) string { return "" }
