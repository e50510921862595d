// Package scope reads CallScope policies: which identity may call which
// destinations.
//
// A CallScope is one YAML document; a file may hold several, separated by
// "---", and a folder several files:
//
//	apiVersion: callscope.dev/v1alpha1
//	kind: CallScope
//	metadata:
//	  name: billing-egress
//	spec:
//	  subject:
//	    namespace: payments
//	    serviceAccount: billing
//	  egress:
//	    - to:
//	        - cidr: 10.0.0.0/8
//	        - dns: "*.stripe.com"
//	        - sni: api.stripe.com
//	      ports: [443, "8000-8100"]
//	      protocol: tcp
//
// # Subject
//
// Every selector given must match. namespace and serviceAccount match
// exactly and each podLabels entry must be equal. spiffeID, systemdUnit, exe
// and cgroup are globs in the syntax of [path.Match]: '*' stands for any run
// of characters but '/', '?' for one character but '/', and [...] for a
// class. A glob never crosses '/', so "/usr/local/bin/ci-*" matches
// "/usr/local/bin/ci-runner" but not "/usr/local/bin/ci-x/runner"; "**" is
// refused because it would look recursive and is not.
//
// # Destinations
//
// Each entry of to names one of:
//   - cidr: an address range; a bare address is a /32 or /128.
//   - dns: a name the caller resolved through DNS.
//   - sni: the server name the caller sent in its TLS ClientHello.
//
// dns and sni are host name patterns, compared without regard to case or
// to a trailing dot. A label "*" stands for exactly one label:
// "*.stripe.com" matches "api.stripe.com" but neither "stripe.com" nor
// "a.b.stripe.com". A leading "**." stands for one or more labels:
// "**.amazonaws.com" matches "s3.amazonaws.com" and "a.b.s3.amazonaws.com"
// but not "amazonaws.com". '*' is allowed only as a whole label and "**" only
// as the first one.
//
// ports lists port numbers and "from-to" ranges; omitted, any port. protocol
// is tcp, the default and the only one supported.
//
// # Mode
//
// mode is enforce, the default, or audit. An audit scope is staged: a call
// outside it is judged would_violate rather than a violation, so that a
// new scope can be watched at work before it is enforced. Where enforced
// and staged scopes bind the same caller, the enforced ones alone give the
// verdict, and the staged ones' outcome is reported beside it
// ([Judgement].Staged).
//
// # Errors
//
// Parse and Load report every problem they find, each with its file, line
// and column, as an [*Errors]; past 100 in a file, they stop looking. So
// that reading a file never takes more than some 20 times the largest one
// in memory, files over 1 MiB are refused; so is a document of more than
// 25,000 YAML nodes (with the documents before it that define anchors),
// before it is decoded, and a file whose aliases stand for more than
// 50,000 nodes.
package scope

import (
	"fmt"
	"net/netip"
)

// APIVersion and Kind identify a CallScope document.
const (
	APIVersion = "callscope.dev/v1alpha1"
	Kind       = "CallScope"
)

// Policy is one CallScope.
type Policy struct {
	Name    string   // metadata.name
	Source  Position // where the document starts
	Mode    Mode     `json:",omitempty"` // spec.mode; left out of the version when enforced, as before modes were
	Subject Subject
	Egress  []Rule // empty: the subject may call nothing
}

// Mode says whether a CallScope's verdicts are enforced or staged.
type Mode uint8

const (
	// Enforce, the default: a call outside the scope is a violation.
	Enforce Mode = iota
	// Audit stages the scope: a call outside it would violate it, and is
	// reported as such, but is no violation. Promoting the scope is
	// deleting its mode.
	Audit
)

func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// MarshalText writes the mode as spec.mode does, for Version.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Position is a place in a policy file. Line and Column count from 1; 0
// means unknown.
type Position struct {
	File         string
	Line, Column int
}

// String gives "file:line:col", leaving out what is unknown.
func (p Position) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// Subject selects the callers a CallScope binds. Every field given must
// match; at least one is given.
type Subject struct {
	Namespace      string            // exact
	ServiceAccount string            // exact
	PodLabels      map[string]string // each must be equal
	SpiffeID       string            // glob
	SystemdUnit    string            // glob
	Exe            string            // glob
	Cgroup         string            // glob
}

// Rule allows calls to any of To, on one of Ports.
type Rule struct {
	To       []Peer
	Ports    []PortRange // empty: any port
	Protocol string      // "tcp"
	Source   Position
}

// Peer is one destination; exactly one field is set.
type Peer struct {
	CIDR netip.Prefix // masked
	DNS  string       // lowercased host name pattern
	SNI  string       // lowercased host name pattern
	// By the callee's identity in the cluster, which the agent learns
	// from the Kubernetes API: a call whose callee it cannot name is not
	// allowed by these.
	Service   string // "namespace/name": the Service's cluster IPs and endpoints
	Namespace string // any pod or Service of the namespace
	SpiffeID  string // glob on the callee pod's SPIFFE ID
}

// PortRange is From to To, both included; From ≤ To.
type PortRange struct{ From, To uint16 }
