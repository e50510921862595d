package scope

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// quote shows a value inside a message.
func quote(s string) string {
	if c := cut(s); c != s {
		return strconv.Quote(c) + "..."
	}
	return strconv.Quote(s)
}

// cut shortens a value shown in a message, so that a hostile file cannot
// make its error messages as large as itself.
func cut(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max]
	}
	return s
}

// checkSubdomain accepts a Kubernetes object name (DNS-1123 subdomain):
// labels of lowercase letters, digits and '-', each starting and ending
// with a letter or digit, joined by '.', 253 characters at most.
func checkSubdomain(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%s is longer than 253 characters", quote(s))
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return fmt.Errorf("%s is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", quote(s))
		}
	}
	return nil
}

// checkDNSLabel accepts a Kubernetes namespace name (DNS-1123 label).
func checkDNSLabel(s string) error {
	if len(s) > 63 || !isDNSLabel(s) {
		return fmt.Errorf("%s is not a valid namespace: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit", quote(s))
	}
	return nil
}

func isDNSLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkService accepts "namespace/name", a Service of a namespace: the
// name a DNS-1035 label, as the API server requires of Services.
func checkService(s string) error {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return fmt.Errorf(`%s is not a Service: want "namespace/name"`, quote(s))
	}
	if err := checkDNSLabel(ns); err != nil {
		return err
	}
	if len(name) > 63 || !isDNSLabel(name) || name[0] < 'a' || name[0] > 'z' {
		return fmt.Errorf("%s is not a valid Service name: at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit", quote(name))
	}
	return nil
}

// checkSpiffeGlob accepts a glob on SPIFFE IDs, as a subject's spiffeID.
func checkSpiffeGlob(s string) error {
	if !strings.HasPrefix(s, "spiffe://") {
		return fmt.Errorf(`%s is not a SPIFFE ID pattern: want "spiffe://<trust domain>/..."`, quote(s))
	}
	return checkGlob(s)
}

// checkGlob accepts a path.Match pattern.
func checkGlob(s string) error {
	if s == "" {
		return errors.New("is empty; leave the field out instead")
	}
	// path.Match checks the whole pattern even when the name does not match.
	if _, err := path.Match(s, ""); err != nil {
		return fmt.Errorf("%s is not a valid glob: %v", quote(s), err)
	}
	if strings.Contains(s, "**") {
		return fmt.Errorf(`%s: "**" is no different from "*" and never crosses '/'; use one "*" per path segment`, quote(s))
	}
	return nil
}

// hostPattern checks a dns or sni pattern and gives its canonical form:
// lowercase, without a trailing dot.
func hostPattern(s string) (string, error) {
	p := strings.TrimSuffix(s, ".")
	if p == "" {
		return "", fmt.Errorf("%s is not a host name pattern", quote(s))
	}
	if len(p) > 253 {
		return "", fmt.Errorf("%s is longer than 253 characters", quote(s))
	}
	labels := strings.Split(p, ".")
	for i, label := range labels {
		switch {
		case label == "":
			return "", fmt.Errorf("%s has an empty label", quote(s))
		case label == "**" && i > 0:
			return "", fmt.Errorf(`%s: "**" may only be the first label`, quote(s))
		case label == "**" && len(labels) == 1:
			return "", fmt.Errorf(`%s would match every name; write "**.example.com"`, quote(s))
		case label == "*" || label == "**":
		case len(label) > 63:
			return "", fmt.Errorf("%s has a label longer than 63 characters", quote(s))
		default:
			if err := checkHostLabel(label); err != nil {
				return "", fmt.Errorf("%s: %w", quote(s), err)
			}
		}
	}
	// Only ASCII is left, so lowering cannot change the length or let a
	// non-ASCII letter (such as the Kelvin sign) turn into an ASCII one.
	return strings.ToLower(p), nil
}

func checkHostLabel(label string) error {
	for i := 0; i < len(label); i++ {
		switch c := label[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '*':
			return errors.New(`"*" may only stand for a whole label`)
		case c >= 0x80:
			return errors.New("non-ASCII names must be written in their xn-- (punycode) form")
		default:
			return fmt.Errorf("%q is not allowed in a host name", c)
		}
	}
	return nil
}

// parseCIDR reads an address range, or a single address as the range of
// just that address.
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if strings.Contains(s, "/") || aerr != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%s is not a CIDR", quote(s))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	// Connections to IPv4 peers are reported with IPv4 addresses, so an
	// IPv4-mapped range would never match anything.
	if p.Addr().Is4In6() {
		if p.Bits() >= 96 {
			v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
			return netip.Prefix{}, fmt.Errorf("%s is an IPv4-mapped IPv6 range; write it as %s", quote(s), v4)
		}
		return netip.Prefix{}, fmt.Errorf("%s is an IPv4-mapped IPv6 range; write IPv4 ranges in IPv4", quote(s))
	}
	// Refused rather than masked: 10.0.0.1/8 may well be a typo for a /32.
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set; did you mean %s?", quote(s), m)
	}
	return p, nil
}

// parsePorts reads a port, "443", or a range, "8000-8100".
func parsePorts(s string) (PortRange, error) {
	from, to, isRange := strings.Cut(s, "-")
	if !isRange {
		to = from
	}
	a, aok := parsePort(from)
	b, bok := parsePort(to)
	if !aok || !bok {
		return PortRange{}, fmt.Errorf(`%s is not a port: want a number from 1 to 65535 or a range "from-to"`, quote(s))
	}
	if a > b {
		return PortRange{}, fmt.Errorf("%s is an empty range: %d is above %d", quote(s), a, b)
	}
	return PortRange{From: a, To: b}, nil
}

func parsePort(s string) (uint16, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err == nil && n >= 1
}
