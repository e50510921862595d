package scope

import (
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

// docHead is what every test document starts with, up to its name.
const docHead = "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata:\n  name: "

func at(line, col int) Position { return Position{File: "p.yaml", Line: line, Column: col} }

func portList(pairs ...uint16) []PortRange {
	var out []PortRange
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, PortRange{pairs[i], pairs[i+1]})
	}
	return out
}

func TestParseValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []Policy
	}{
		{
			name: "subject only: may call nothing",
			yaml: docHead + "a\nspec:\n  subject: {namespace: payments}\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{Namespace: "payments"}}},
		},
		{
			name: "null egress is no egress",
			yaml: docHead + "a\nspec:\n  subject: {namespace: payments}\n  egress:\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{Namespace: "payments"}}},
		},
		{
			name: "ports mixing numbers, ranges and numeric strings",
			yaml: docHead + "a\nspec:\n  subject: {exe: /bin/curl}\n  egress:\n" +
				"    - to: [{cidr: 10.0.0.0/8}]\n      ports: [443, \"8000-8100\", \"9000\", 1-1024, 65535, \"7-7\"]\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{Exe: "/bin/curl"}, Egress: []Rule{{
				To:       []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
				Ports:    portList(443, 443, 8000, 8100, 9000, 9000, 1, 1024, 65535, 65535, 7, 7),
				Protocol: "tcp", Source: at(8, 7),
			}}}},
		},
		{
			name: "IPv6 ranges and bare addresses",
			yaml: docHead + "a\nspec:\n  subject: {exe: /bin/curl}\n  egress:\n    - to:\n" +
				"        - cidr: 2001:db8::/32\n        - cidr: \"2001:db8::1\"\n        - cidr: 192.0.2.7\n" +
				"        - cidr: ::/0\n        - cidr: 0.0.0.0/0\n        - cidr: fe80::/10\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{Exe: "/bin/curl"}, Egress: []Rule{{
				To: []Peer{
					{CIDR: netip.MustParsePrefix("2001:db8::/32")}, {CIDR: netip.MustParsePrefix("2001:db8::1/128")},
					{CIDR: netip.MustParsePrefix("192.0.2.7/32")}, {CIDR: netip.MustParsePrefix("::/0")},
					{CIDR: netip.MustParsePrefix("0.0.0.0/0")}, {CIDR: netip.MustParsePrefix("fe80::/10")},
				},
				Protocol: "tcp", Source: at(8, 7),
			}}}},
		},
		{
			name: "host patterns are lowercased and lose their trailing dot",
			yaml: docHead + "a\nspec:\n  subject: {exe: /bin/curl}\n  egress:\n    - to:\n" +
				"        - dns: \"*.Stripe.COM.\"\n        - sni: API.stripe.com\n        - dns: \"**.amazonaws.com\"\n" +
				"        - sni: \"**.*.example.org\"\n        - dns: _dmarc.example.com\n        - dns: \"*\"\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{Exe: "/bin/curl"}, Egress: []Rule{{
				To: []Peer{
					{DNS: "*.stripe.com"}, {SNI: "api.stripe.com"}, {DNS: "**.amazonaws.com"},
					{SNI: "**.*.example.org"}, {DNS: "_dmarc.example.com"}, {DNS: "*"},
				},
				Protocol: "tcp", Source: at(8, 7),
			}}}},
		},
		{
			name: "globs",
			yaml: docHead + "a\nspec:\n  subject:\n" +
				"    spiffeID: \"spiffe://cluster.local/ns/*/sa/billing\"\n" +
				"    systemdUnit: \"backup[0-9]?.service\"\n" +
				"    exe: \"/usr/local/bin/ci-*\"\n" +
				"    cgroup: '/system.slice/\\*literal'\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{
				SpiffeID: "spiffe://cluster.local/ns/*/sa/billing", SystemdUnit: "backup[0-9]?.service",
				Exe: "/usr/local/bin/ci-*", Cgroup: `/system.slice/\*literal`,
			}}},
		},
		{
			name: "protocol in any case",
			yaml: docHead + "a\nspec:\n  subject: {podLabels: {app: x}}\n  egress:\n    - to: [{sni: a.example}]\n      protocol: TCP\n",
			want: []Policy{{Name: "a", Source: at(1, 1), Subject: Subject{PodLabels: map[string]string{"app": "x"}},
				Egress: []Rule{{To: []Peer{{SNI: "a.example"}}, Protocol: "tcp", Source: at(8, 7)}}}},
		},
		{
			name: "several documents, empty ones skipped",
			yaml: "---\n# nothing\n---\n" + docHead + "a\nspec: {subject: {namespace: x}}\n---\n---\n" +
				docHead + "b.c\nspec: {subject: {namespace: y}}\n...\n",
			want: []Policy{
				{Name: "a", Source: at(4, 1), Subject: Subject{Namespace: "x"}},
				{Name: "b.c", Source: at(11, 1), Subject: Subject{Namespace: "y"}},
			},
		},
		{
			name: "aliases stand for what they name",
			yaml: docHead + "a\nspec:\n  subject: {namespace: x}\n  egress:\n" +
				"    - to: &internal [{cidr: 10.0.0.0/8}, {cidr: \"fd00::/8\"}]\n      ports: &web [80, 443]\n" +
				"    - to: *internal\n      ports: *web\n---\n" +
				docHead + "b\nspec:\n  subject: {namespace: y}\n  egress: [{to: *internal}]\n",
			want: []Policy{
				{Name: "a", Source: at(1, 1), Subject: Subject{Namespace: "x"}, Egress: []Rule{
					{To: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, {CIDR: netip.MustParsePrefix("fd00::/8")}}, Ports: portList(80, 80, 443, 443), Protocol: "tcp", Source: at(8, 7)},
					{To: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, {CIDR: netip.MustParsePrefix("fd00::/8")}}, Ports: portList(80, 80, 443, 443), Protocol: "tcp", Source: at(10, 7)},
				}},
				{Name: "b", Source: at(13, 1), Subject: Subject{Namespace: "y"}, Egress: []Rule{
					{To: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, {CIDR: netip.MustParsePrefix("fd00::/8")}}, Protocol: "tcp", Source: at(19, 12)},
				}},
			},
		},
		{name: "empty file", yaml: ""},
		{name: "comments only", yaml: "# nothing here yet\n"},
		{name: "empty documents only", yaml: "---\n---\n~\n---\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("p.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseEveryField(t *testing.T) {
	data, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("valid.yaml", data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	at := func(line, col int) Position { return Position{"valid.yaml", line, col} }
	want := []Policy{
		{
			Name:   "billing-egress",
			Source: at(3, 1),
			Subject: Subject{
				Namespace:      "payments",
				ServiceAccount: "billing",
				PodLabels:      map[string]string{"app": "billing", "tier": "1"},
				SpiffeID:       "spiffe://cluster.local/ns/payments/sa/*",
				SystemdUnit:    "billing?.service",
				Exe:            "/app/billing",
				Cgroup:         "/kubepods.slice/*/cri-containerd-[0-9a-f]*.scope",
			},
			Egress: []Rule{
				{
					To: []Peer{
						{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, {CIDR: netip.MustParsePrefix("192.0.2.7/32")},
						{CIDR: netip.MustParsePrefix("2001:db8::/32")}, {CIDR: netip.MustParsePrefix("2001:db8::1/128")},
						{DNS: "*.stripe.com"}, {SNI: "api.stripe.com"}, {DNS: "**.amazonaws.com"},
					},
					Ports:    portList(443, 443, 8000, 8100, 9000, 9000, 1, 1024),
					Protocol: "tcp",
					Source:   at(20, 7),
				},
				{To: []Peer{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}, {CIDR: netip.MustParsePrefix("::/0")}}, Protocol: "tcp", Source: at(30, 7)},
				{
					To:    []Peer{{Service: "payments/ledger"}, {Namespace: "shared"}, {SpiffeID: "spiffe://cluster.local/ns/*/sa/ledger"}},
					Ports: portList(8443, 8443), Protocol: "tcp", Source: at(31, 7),
				},
			},
		},
		{Name: "nothing-allowed.example", Source: at(36, 1), Subject: Subject{Exe: "/usr/local/bin/*"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
	}
}

// problems returns the lines of err, failing unless it is an *Errors.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T) is not an *Errors", err, err)
	}
	var lines []string
	for _, e := range *errs {
		lines = append(lines, e.Error())
	}
	if got := strings.Join(lines, "\n"); got != err.Error() {
		t.Errorf("Error() = %q, want the problems one per line", err.Error())
	}
	return lines
}

func TestParseErrors(t *testing.T) {
	const subject = "spec:\n  subject: {namespace: payments}\n  egress:\n"
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "bad CIDR",
			yaml: docHead + "billing\n" + subject + "    - to:\n        - cidr: 10.0.0.0/8\n        - cidr: 10.0.0.1/33\n",
			want: []string{`policies/billing.yaml:10:17: egress[0].to[1].cidr: "10.0.0.1/33" is not a CIDR`},
		},
		{
			name: "host bits set",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: 10.0.0.1/8}]\n",
			want: []string{`policies/billing.yaml:8:19: egress[0].to[0].cidr: "10.0.0.1/8" has host bits set; did you mean 10.0.0.0/8?`},
		},
		{
			name: "IPv4-mapped IPv6",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: \"::ffff:192.0.2.0/120\"}]\n",
			want: []string{`policies/billing.yaml:8:19: egress[0].to[0].cidr: "::ffff:192.0.2.0/120" is an IPv4-mapped IPv6 range; write it as 192.0.2.0/24`},
		},
		{
			name: "address with a zone",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: \"fe80::1%eth0\"}]\n",
			want: []string{`policies/billing.yaml:8:19: egress[0].to[0].cidr: "fe80::1%eth0" is not a CIDR`},
		},
		{
			name: "bad callees",
			yaml: docHead + "billing\n" + subject + "    - to:\n" +
				"        - service: ledger\n" +
				"        - service: Payments/ledger\n" +
				"        - service: payments/9ledger\n" +
				"        - namespace: pay_ments\n" +
				"        - spiffeID: \"cluster.local/ns/*\"\n" +
				"        - spiffeID: \"spiffe://cluster.local/ns/[a\"\n",
			want: []string{
				`policies/billing.yaml:9:20: egress[0].to[0].service: "ledger" is not a Service: want "namespace/name"`,
				`policies/billing.yaml:10:20: egress[0].to[1].service: "Payments" is not a valid namespace: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit`,
				`policies/billing.yaml:11:20: egress[0].to[2].service: "9ledger" is not a valid Service name: at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit`,
				`policies/billing.yaml:12:22: egress[0].to[3].namespace: "pay_ments" is not a valid namespace: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit`,
				`policies/billing.yaml:13:21: egress[0].to[4].spiffeID: "cluster.local/ns/*" is not a SPIFFE ID pattern: want "spiffe://<trust domain>/..."`,
				`policies/billing.yaml:14:21: egress[0].to[5].spiffeID: "spiffe://cluster.local/ns/[a" is not a valid glob: syntax error in pattern`,
			},
		},
		{
			name: "unknown field with the valid ones",
			yaml: docHead + "billing\nspec:\n  subject: {namespace: payments}\n  egress:\n    - to: [{cidr: 10.0.0.0/8}]\n      port: [443]\n",
			want: []string{`policies/billing.yaml:9:7: egress[0]: unknown field "port"; valid fields are to, ports, protocol`},
		},
		{
			name: "unknown field differing in case",
			yaml: docHead + "billing\nspec:\n  subject: {namespace: payments, serviceaccount: billing}\n",
			want: []string{`policies/billing.yaml:6:34: subject: unknown field "serviceaccount"; did you mean serviceAccount? valid fields are namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`},
		},
		{
			name: "unknown top-level and metadata fields",
			yaml: docHead + "billing\n  namespace: payments\nspec:\n  subject: {namespace: payments}\nstatus: {}\n",
			want: []string{
				`policies/billing.yaml:5:3: metadata: unknown field "namespace"; valid fields are name, labels, annotations`,
				`policies/billing.yaml:8:1: unknown field "status"; valid fields are apiVersion, kind, metadata, spec`,
			},
		},
		{
			name: "field given twice",
			yaml: docHead + "billing\nspec:\n  subject:\n    namespace: payments\n    namespace: billing\n",
			want: []string{`policies/billing.yaml:8:5: subject: "namespace" given twice (first at 7:5)`},
		},
		{
			name: "merge keys",
			yaml: docHead + "billing\nspec:\n  subject:\n    <<: {namespace: payments}\n",
			want: []string{
				`policies/billing.yaml:7:5: subject: merge keys (<<) are not supported`,
				`policies/billing.yaml:7:5: subject: give at least one of namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`,
			},
		},
		{
			name: "wrong apiVersion",
			yaml: "apiVersion: v1\nkind: CallScope\nmetadata: {name: a}\nspec: {subject: {namespace: x}}\n",
			want: []string{`policies/billing.yaml:1:13: apiVersion: "v1" is not supported; want callscope.dev/v1alpha1`},
		},
		{
			name: "another kind is not checked further",
			yaml: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {replicas: 3}\n",
			want: []string{
				`policies/billing.yaml:1:13: apiVersion: "apps/v1" is not supported; want callscope.dev/v1alpha1`,
				`policies/billing.yaml:2:7: kind: "Deployment" is not CallScope`,
			},
		},
		{
			name: "missing everything",
			yaml: "{}\n",
			want: []string{
				`policies/billing.yaml:1:1: apiVersion: missing; want callscope.dev/v1alpha1`,
				`policies/billing.yaml:1:1: kind: missing; want CallScope`,
				`policies/billing.yaml:1:1: metadata.name: missing`,
				`policies/billing.yaml:1:1: spec: missing`,
			},
		},
		{
			name: "document is not a mapping",
			yaml: "- a\n- b\n",
			want: []string{`policies/billing.yaml:1:1: a CallScope must be a mapping of apiVersion, kind, metadata, spec, not a list`},
		},
		{
			name: "name not a DNS subdomain",
			yaml: docHead + "Billing\nspec: {subject: {namespace: x}}\n",
			want: []string{`policies/billing.yaml:4:9: metadata.name: "Billing" is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit`},
		},
		{
			name: "name twice in a file",
			yaml: docHead + "billing\nspec: {subject: {namespace: x}}\n---\n" + docHead + "billing\nspec: {subject: {namespace: y}}\n",
			want: []string{`policies/billing.yaml:10:9: metadata.name: "billing" is taken by the CallScope at policies/billing.yaml:4:9`},
		},
		{
			name: "subject with no selector",
			yaml: docHead + "billing\nspec:\n  subject: {podLabels: {}}\n  egress: []\n",
			want: []string{`policies/billing.yaml:6:12: subject: give at least one of namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`},
		},
		{
			name: "missing subject",
			yaml: docHead + "billing\nspec:\n  egress: []\n",
			want: []string{`policies/billing.yaml:6:3: subject: missing; give at least one of namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`},
		},
		{
			name: "bad glob",
			yaml: docHead + "billing\nspec:\n  subject: {exe: \"/usr/bin/[a-\"}\n",
			want: []string{`policies/billing.yaml:6:18: subject.exe: "/usr/bin/[a-" is not a valid glob: syntax error in pattern`},
		},
		{
			name: "double star glob",
			yaml: docHead + "billing\nspec:\n  subject: {cgroup: \"/kubepods.slice/**\"}\n",
			want: []string{`policies/billing.yaml:6:21: subject.cgroup: "/kubepods.slice/**": "**" is no different from "*" and never crosses '/'; use one "*" per path segment`},
		},
		{
			name: "label value not a string",
			yaml: docHead + "billing\nspec:\n  subject:\n    podLabels: {app: billing, version: 2, canary: true}\n",
			want: []string{
				`policies/billing.yaml:7:40: subject.podLabels.version: must be a string, not int 2: quote it`,
				`policies/billing.yaml:7:51: subject.podLabels.canary: must be a string, not bool true: quote it`,
			},
		},
		{
			name: "namespace not a string",
			yaml: docHead + "billing\nspec:\n  subject:\n    namespace: [a, b]\n",
			want: []string{`policies/billing.yaml:7:16: subject.namespace: must be a string, not a list`},
		},
		{
			name: "peer with two fields and with none",
			yaml: docHead + "billing\n" + subject + "    - to:\n        - {cidr: 10.0.0.0/8, sni: a.example}\n        - {}\n        - 10.0.0.0/8\n",
			want: []string{
				`policies/billing.yaml:9:11: egress[0].to[0]: give only one of cidr, dns, sni, service, namespace or spiffeID, not cidr and sni`,
				`policies/billing.yaml:10:11: egress[0].to[1]: give one of cidr, dns, sni, service, namespace or spiffeID`,
				`policies/billing.yaml:11:11: egress[0].to[2]: must be a mapping, not "10.0.0.0/8"`,
			},
		},
		{
			name: "host patterns",
			yaml: docHead + "billing\n" + subject + "    - to:\n" +
				"        - dns: \"api.*-stripe.com\"\n        - dns: \"a.**.com\"\n        - sni: \"**\"\n" +
				"        - dns: \"a..com\"\n        - sni: \"bücher.de\"\n        - dns: \"a b.com\"\n",
			want: []string{
				`policies/billing.yaml:9:16: egress[0].to[0].dns: "api.*-stripe.com": "*" may only stand for a whole label`,
				`policies/billing.yaml:10:16: egress[0].to[1].dns: "a.**.com": "**" may only be the first label`,
				`policies/billing.yaml:11:16: egress[0].to[2].sni: "**" would match every name; write "**.example.com"`,
				`policies/billing.yaml:12:16: egress[0].to[3].dns: "a..com" has an empty label`,
				`policies/billing.yaml:13:16: egress[0].to[4].sni: "bücher.de": non-ASCII names must be written in their xn-- (punycode) form`,
				`policies/billing.yaml:14:16: egress[0].to[5].dns: "a b.com": ' ' is not allowed in a host name`,
			},
		},
		{
			name: "ports",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: 10.0.0.0/8}]\n      ports: [0, \"80-\", 65536, \"90-80\", http, 443.5, [1]]\n",
			want: []string{
				`policies/billing.yaml:9:15: egress[0].ports[0]: "0" is not a port: want a number from 1 to 65535 or a range "from-to"`,
				`policies/billing.yaml:9:18: egress[0].ports[1]: "80-" is not a port: want a number from 1 to 65535 or a range "from-to"`,
				`policies/billing.yaml:9:25: egress[0].ports[2]: "65536" is not a port: want a number from 1 to 65535 or a range "from-to"`,
				`policies/billing.yaml:9:32: egress[0].ports[3]: "90-80" is an empty range: 90 is above 80`,
				`policies/billing.yaml:9:41: egress[0].ports[4]: "http" is not a port: want a number from 1 to 65535 or a range "from-to"`,
				`policies/billing.yaml:9:47: egress[0].ports[5]: float 443.5 is not a port: want a number from 1 to 65535 or a range "from-to"`,
				`policies/billing.yaml:9:54: egress[0].ports[6]: a list is not a port: want a number from 1 to 65535 or a range "from-to"`,
			},
		},
		{
			name: "empty ports",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: 10.0.0.0/8}]\n      ports: []\n    - to: [{cidr: 10.0.0.0/8}]\n      ports:\n",
			want: []string{
				`policies/billing.yaml:9:14: egress[0].ports: empty; leave ports out to allow any port`,
				`policies/billing.yaml:11:13: egress[1].ports: must be a list, not null`,
			},
		},
		{
			name: "a bad value named by aliases is reported where it is written",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: &bad 10.0.0.1/33}]\n    - to: [{cidr: *bad}]\n",
			want: []string{
				`policies/billing.yaml:8:19: egress[0].to[0].cidr: "10.0.0.1/33" is not a CIDR`,
				`policies/billing.yaml:8:19: egress[1].to[0].cidr: "10.0.0.1/33" is not a CIDR`,
			},
		},
		{
			name: "udp",
			yaml: docHead + "billing\n" + subject + "    - to: [{cidr: 10.0.0.0/8}]\n      protocol: UDP\n",
			want: []string{`policies/billing.yaml:9:17: egress[0].protocol: "UDP": only tcp is supported`},
		},
		{
			name: "rule without to",
			yaml: docHead + "billing\n" + subject + "    - ports: [443]\n    - to: []\n",
			want: []string{
				`policies/billing.yaml:8:7: egress[0].to: missing; give at least one of cidr, dns, sni, service, namespace or spiffeID (0.0.0.0/0 and ::/0 are any address)`,
				`policies/billing.yaml:9:11: egress[1].to: empty; give at least one of cidr, dns, sni, service, namespace or spiffeID`,
			},
		},
		{
			name: "egress not a list",
			yaml: docHead + "billing\n" + subject + "    to: [{cidr: 10.0.0.0/8}]\n",
			want: []string{`policies/billing.yaml:8:5: egress: must be a list, not a mapping`},
		},
		{
			name: "YAML syntax error after a good document",
			yaml: docHead + "billing\nspec: {subject: {namespace: x}}\n---\nkind: [\n",
			want: []string{`policies/billing.yaml:8:1: invalid YAML: did not find expected node content at the end of the file`},
		},
		{
			name: "unknown alias",
			yaml: docHead + "billing\nspec: {subject: *nowhere}\n",
			want: []string{`policies/billing.yaml:5:17: invalid YAML: unknown anchor 'nowhere' referenced`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policies, err := Parse("policies/billing.yaml", []byte(tc.yaml))
			if policies != nil {
				t.Errorf("Parse returned policies %+v along with an error", policies)
			}
			got := problems(t, err)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestParseReportsEveryProblem checks that one run lists all the problems
// of a file, in file order.
func TestParseReportsEveryProblem(t *testing.T) {
	data, err := os.ReadFile("testdata/invalid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("invalid.yaml", data)
	got := problems(t, err)
	want := []string{
		`invalid.yaml:1:13: apiVersion: "callscope.dev/v1beta9" is not supported; want callscope.dev/v1alpha1`,
		`invalid.yaml:4:9: metadata.name: "Billing_Egress" is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit`,
		`invalid.yaml:5:3: metadata: unknown field "uid"; valid fields are name, labels, annotations`,
		`invalid.yaml:9:5: subject: unknown field "serviceaccount"; did you mean serviceAccount? valid fields are namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`,
		`invalid.yaml:10:10: subject.exe: "/app/[billing" is not a valid glob: syntax error in pattern`,
		`invalid.yaml:11:26: subject.podLabels.version: must be a string, not int 2: quote it`,
		`invalid.yaml:14:17: egress[0].to[0].cidr: "10.0.0.1/33" is not a CIDR`,
		`invalid.yaml:15:17: egress[0].to[1].cidr: "10.0.0.1/8" has host bits set; did you mean 10.0.0.0/8?`,
		`invalid.yaml:16:16: egress[0].to[2].dns: "api.*-stripe.com": "*" may only stand for a whole label`,
		`invalid.yaml:17:16: egress[0].to[3].sni: "**" would match every name; write "**.example.com"`,
		`invalid.yaml:18:17: egress[0].to[4].cidr: "::ffff:10.0.0.0/104" is an IPv4-mapped IPv6 range; write it as 10.0.0.0/8`,
		`invalid.yaml:19:11: egress[0].to[5]: give only one of cidr, dns, sni, service, namespace or spiffeID, not cidr and dns`,
		`invalid.yaml:20:11: egress[0].to[6]: give one of cidr, dns, sni, service, namespace or spiffeID`,
		`invalid.yaml:21:15: egress[0].ports[0]: "0" is not a port: want a number from 1 to 65535 or a range "from-to"`,
		`invalid.yaml:21:18: egress[0].ports[1]: "80-" is not a port: want a number from 1 to 65535 or a range "from-to"`,
		`invalid.yaml:21:25: egress[0].ports[2]: "65536" is not a port: want a number from 1 to 65535 or a range "from-to"`,
		`invalid.yaml:21:32: egress[0].ports[3]: "90-80" is an empty range: 90 is above 80`,
		`invalid.yaml:22:17: egress[0].protocol: "udp": only tcp is supported`,
		`invalid.yaml:23:7: egress[1].to: missing; give at least one of cidr, dns, sni, service, namespace or spiffeID (0.0.0.0/0 and ::/0 are any address)`,
		`invalid.yaml:25:1: apiVersion: missing; want callscope.dev/v1alpha1`,
		`invalid.yaml:29:12: subject: give at least one of namespace, serviceAccount, podLabels, spiffeID, systemdUnit, exe, cgroup`,
		`invalid.yaml:30:3: spec: unknown field "egres"; valid fields are subject, egress, mode`,
		`invalid.yaml:34:18: metadata.name: "second" is taken by the CallScope at invalid.yaml:27:9`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestParseErrorsAreStructured checks what a caller can read from each
// problem without parsing the message.
func TestParseErrorsAreStructured(t *testing.T) {
	_, err := Parse("f.yaml", []byte(docHead+"a\nspec:\n  subject: {namespace: x}\n  egress: [{to: [{cidr: nope}]}]\n"))
	var errs *Errors
	if !errors.As(err, &errs) || len(*errs) != 1 {
		t.Fatalf("Parse error = %v, want one problem", err)
	}
	want := &Error{Pos: Position{File: "f.yaml", Line: 7, Column: 25}, Field: "egress[0].to[0].cidr", Msg: `"nope" is not a CIDR`}
	if got := (*errs)[0]; !reflect.DeepEqual(got, want) {
		t.Errorf("problem = %+v, want %+v", got, want)
	}
}

func TestParseStopsAfterManyProblems(t *testing.T) {
	var b strings.Builder
	for range 500 {
		b.WriteString("---\nnot a policy\n")
	}
	_, err := Parse("junk.yaml", []byte(b.String()))
	got := problems(t, err)
	if len(got) != maxErrors+1 {
		t.Fatalf("got %d problems, want %d and a note", len(got), maxErrors)
	}
	if last := got[len(got)-1]; last != "junk.yaml: more than 100 problems; stopped checking" {
		t.Errorf("last problem = %q", last)
	}
}

func TestPositionString(t *testing.T) {
	for _, tc := range []struct {
		pos  Position
		want string
	}{
		{Position{"a.yaml", 3, 9}, "a.yaml:3:9"},
		{Position{"a.yaml", 3, 0}, "a.yaml:3"},
		{Position{"a.yaml", 0, 0}, "a.yaml"},
	} {
		if got := tc.pos.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.pos, got, tc.want)
		}
	}
}

func TestValueLimits(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name  string
		check func() error
		ok    bool
	}{
		{"label of 63", func() error { _, err := hostPattern(long + ".com"); return err }, true},
		{"label of 64", func() error { _, err := hostPattern(long + "a.com"); return err }, false},
		{"name of 253", func() error { _, err := hostPattern(strings.Repeat(long+".", 3) + long[:61]); return err }, true},
		{"name of 254", func() error { _, err := hostPattern(strings.Repeat(long+".", 3) + long[:62]); return err }, false},
		{"name of 253 and a dot", func() error { _, err := hostPattern(strings.Repeat(long+".", 4)[:253] + "."); return err }, true},
		{"just a dot", func() error { _, err := hostPattern("."); return err }, false},
		{"star inside a label", func() error { _, err := hostPattern("a*.com"); return err }, false},
		{"Kelvin sign", func() error { _, err := hostPattern("\u212a.com"); return err }, false},
		{"object name of 253", func() error { return checkSubdomain(strings.Repeat(long+".", 4)[:253]) }, true},
		{"object name of 254", func() error { return checkSubdomain(strings.Repeat(long+".", 4)[:251] + "abc") }, false},
		{"object name ending in a dash", func() error { return checkSubdomain("a-") }, false},
		{"object name with an empty label", func() error { return checkSubdomain("a..b") }, false},
		{"namespace of 64", func() error { return checkDNSLabel(long + "a") }, false},
		{"namespace with a dot", func() error { return checkDNSLabel("a.b") }, false},
		{"empty glob", func() error { return checkGlob("") }, false},
		{"glob class", func() error { return checkGlob("/a/[!b-d]*") }, true},
	} {
		if err := tc.check(); (err == nil) != tc.ok {
			t.Errorf("%s: error %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestQuoteIsShort(t *testing.T) {
	_, err := Parse("p.yaml", []byte(docHead+"a\nspec:\n  subject: {namespace: x}\n  egress: [{to: [{cidr: "+strings.Repeat("9", 100000)+"}]}]\n"))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("error of %d bytes, want a short one: %.300v", len(err.Error()), err)
	}
}

func TestCIDRsAreMasked(t *testing.T) {
	// The matcher relies on prefixes being masked.
	for _, s := range []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::1", "2001:db8::/32", "::/0"} {
		p, err := parseCIDR(s)
		if err != nil || p != p.Masked() || !p.IsValid() {
			t.Errorf("parseCIDR(%q) = %v, %v; want a valid masked prefix", s, p, err)
		}
		if p.Addr().Is4() != netip.MustParseAddr(strings.Split(s, "/")[0]).Is4() {
			t.Errorf("parseCIDR(%q) = %v changed the family", s, p)
		}
	}
}
