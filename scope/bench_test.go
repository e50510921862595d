package scope

import (
	"fmt"
	"strings"
	"testing"
)

// benchPoliciesYAML is the YAML of n CallScopes, numbered from first, each a
// few rules long.
func benchPoliciesYAML(first, n int) string {
	var sb strings.Builder
	for i := first; i < first+n; i++ {
		fmt.Fprintf(&sb, `---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: service-%d
spec:
  subject:
    namespace: team-%d
    serviceAccount: service-%d
    podLabels: {app: service-%d}
  egress:
    - to:
        - cidr: 10.%d.0.0/16
        - cidr: "2001:db8:%x::/48"
        - dns: "*.service-%d.example.com"
        - sni: api.service-%d.example.com
      ports: [443, "8000-8100"]
    - to: [{dns: "**.amazonaws.com"}]
      ports: [443]
`, i, i%50, i, i, i%256, i, i, i)
	}
	return sb.String()
}

// BenchmarkParse reads a file of 1,000 CallScopes, each a few rules long.
func BenchmarkParse(b *testing.B) {
	data := []byte(benchPoliciesYAML(0, 1000))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		policies, err := Parse("bench.yaml", data)
		if err != nil || len(policies) != 1000 {
			b.Fatalf("Parse = %d policies, %v", len(policies), err)
		}
	}
}
