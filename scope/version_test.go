package scope

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
)

const versionBase = `apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: billing
spec:
  subject:
    namespace: payments
    podLabels: {app: billing, tier: "1"}
  egress:
    - to:
        - cidr: 10.0.0.0/8
        - dns: "*.stripe.com"
      ports: [443, "8000-8100"]
    - to: [{service: payments/ledger}]
---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: backup
spec:
  subject: {systemdUnit: backup.service}
`

func parsedVersion(t *testing.T, files ...string) string {
	t.Helper()
	var all []Policy
	names := map[string]Position{}
	for i, f := range files {
		ps, errs := parseFile(string(rune('a'+i))+".yaml", []byte(f), names)
		if len(errs) > 0 {
			t.Fatalf("file %d: %v", i, &errs)
		}
		all = append(all, ps...)
	}
	return Version(all)
}

func TestVersionIgnoresFormatting(t *testing.T) {
	want := parsedVersion(t, versionBase)
	billingDoc, _, _ := strings.Cut(versionBase, "---\n")
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(want) {
		t.Fatalf("version %q, want 12 hex digits", want)
	}
	for name, files := range map[string][]string{
		"documents swapped": {`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: backup}
spec: {subject: {systemdUnit: backup.service}}
---
# The same, in flow style, keys in another order, with labels and a comment.
kind: CallScope
apiVersion: "callscope.dev/v1alpha1"
metadata: {name: billing, labels: {team: payments}}
spec:
  egress:
    - ports: [443, 8000-8100]
      protocol: TCP
      to: [{cidr: "10.0.0.0/8"}, {dns: "*.Stripe.COM."}]
    - {to: [{service: "payments/ledger"}]}
  subject: {podLabels: {tier: "1", app: billing}, namespace: payments}
`},
		"two files": {`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: backup}
spec: {subject: {systemdUnit: backup.service}, egress: []}
`, billingDoc},
		"anchors": {`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: billing}
spec:
  subject: {namespace: payments, podLabels: &labels {app: billing, tier: "1"}}
  egress:
    - to: [&net {cidr: 10.0.0.0/8}, {dns: "*.stripe.com"}]
      ports: &ports [443, "8000-8100"]
    - to: [{service: payments/ledger}]
---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: backup}
spec: {subject: {systemdUnit: backup.service, podLabels: {}}}
`},
	} {
		if got := parsedVersion(t, files...); got != want {
			t.Errorf("%s: version %s, want %s", name, got, want)
		}
	}
}

func TestVersionChangesWithPolicies(t *testing.T) {
	base := parsedVersion(t, versionBase)
	seen := map[string]string{base: "base"}
	for name, edit := range map[string][2]string{
		"a port":          {`[443, "8000-8100"]`, `[443, "8000-8101"]`},
		"a cidr":          {`10.0.0.0/8`, `10.0.0.0/9`},
		"a dns pattern":   {`"*.stripe.com"`, `"**.stripe.com"`},
		"a kind of peer":  {`dns: "*.stripe.com"`, `sni: "*.stripe.com"`},
		"a service":       {`payments/ledger`, `payments/ledgers`},
		"a label":         {`tier: "1"`, `tier: "2"`},
		"a name":          {`name: backup`, `name: backups`},
		"a selector":      {`namespace: payments`, `serviceAccount: payments`},
		"the rules order": {"    - to:\n        - cidr: 10.0.0.0/8\n        - dns: \"*.stripe.com\"\n      ports: [443, \"8000-8100\"]\n    - to: [{service: payments/ledger}]\n", "    - to: [{service: payments/ledger}]\n    - to:\n        - cidr: 10.0.0.0/8\n        - dns: \"*.stripe.com\"\n      ports: [443, \"8000-8100\"]\n"},
		"a rule removed":  {"    - to: [{service: payments/ledger}]\n", ""},
	} {
		i := strings.Index(versionBase, edit[0])
		if i < 0 {
			t.Fatalf("%s: %q is not in the base", name, edit[0])
		}
		doc := versionBase[:i] + edit[1] + versionBase[i+len(edit[0]):]
		v := parsedVersion(t, doc)
		if other, dup := seen[v]; dup {
			t.Errorf("%s: version %s, the same as %s", name, v, other)
		}
		seen[v] = name
	}
	if Version(nil) == base || Version(nil) != Version([]Policy{}) {
		t.Error("the empty set's version")
	}
}

// Every verdict names the version of the policies that gave it, the
// verdict events that close pending calls included.
func TestVerdictsCarryVersion(t *testing.T) {
	policies, err := Parse("p.yaml", []byte(docHead+"tls\nspec:\n  subject: {exe: /app}\n  egress: [{to: [{sni: api.example}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := Compile(policies)
	if m.Version() != Version(policies) {
		t.Fatalf("matcher version %s, policies %s", m.Version(), Version(policies))
	}
	s := NewStage(StageConfig{Policies: NewPolicies(m), PendingTimeout: time.Second})
	ev := enrich.Event{Event: collector.Event{Kind: collector.KindConnect, Cookie: 7, Outcome: collector.OutcomeEstablished}}
	ev.Process = &enrich.Process{Exe: "/app"}
	now := time.Now()
	out := s.JudgeBatch([]enrich.Event{ev}, nil, now)
	out = s.Expire(out, now.Add(2*time.Second), false)
	if len(out) != 2 || out[0].Scope.Verdict != Pending || out[1].Kind != collector.KindVerdict {
		t.Fatalf("events %+v, want a pending connect and its verdict event", out)
	}
	for _, e := range out {
		if e.Scope.PolicyVersion != m.Version() {
			t.Errorf("%s event: policy version %q, want %s", e.Kind, e.Scope.PolicyVersion, m.Version())
		}
	}
}
