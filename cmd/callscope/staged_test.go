package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/kerneltest"
)

// stagedEvent is the part of an event the staged scope test reads.
type stagedEvent struct {
	Kind  string `json:"kind"`
	Conn  string `json:"conn"`
	Scope *struct {
		Verdict string `json:"verdict"`
		Policy  string `json:"policy"`
		Rule    string `json:"rule"`
		Reason  string `json:"reason"`
		Staged  *struct {
			Verdict string `json:"verdict"`
			Policy  string `json:"policy"`
			Rule    string `json:"rule"`
			Reason  string `json:"reason"`
		} `json:"staged"`
	} `json:"scope"`
}

// TestAgentStagedScopes runs the agent with staged scopes (mode: audit),
// alone and beside an enforced one, and checks real calls: a call outside
// a staged scope is would_violate, never a violation, a pending one closes
// as would_violate, and beside an enforced scope the staged outcome goes in
// scope.staged while the enforced verdict stands. The metrics count
// would_violate apart and the calls each rule allowed.
func TestAgentStagedScopes(t *testing.T) {
	kerneltest.Require(t)
	open := listenAny(t, "127.0.0.1:0")
	other := listenAny(t, "[::1]:0")
	wide := listenAny(t, "127.0.0.9:0")
	tlsSrv := kerneltest.NewTLSServer(t, "127.0.0.1:0")

	dir := t.TempDir()
	policy := fmt.Sprintf(`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: staged-only
spec:
  mode: audit
  subject:
    cgroup: "/callscope-test-*/staged"
  egress:
    - to: [{cidr: 127.0.0.1/32}]
      ports: [%d]
    - to: [{sni: allowed.example.test}]
      ports: [%d]
---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: both
spec:
  subject:
    cgroup: "/callscope-test-*/both"
  egress:
    - to: [{cidr: 127.0.0.0/8}]
---
apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: both-next
spec:
  mode: audit
  subject:
    cgroup: "/callscope-test-*/both"
  egress:
    - to: [{cidr: 127.0.0.1/32}]
      ports: [%d]
`, open.Port(), tlsSrv.Addr.Port(), open.Port())
	if err := os.WriteFile(filepath.Join(dir, "staged.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--policy", dir, "--pending-timeout", "1s")
	staged := kerneltest.NewCgroup(t, "staged")
	both := kerneltest.NewCgroup(t, "both")

	events := func(t *testing.T, pid, n int) []stagedEvent {
		t.Helper()
		a.await(t, pid, n)
		var out []stagedEvent
		for _, line := range a.lines(pid) {
			var e stagedEvent
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
		return out
	}
	connect := func(t *testing.T, cg *kerneltest.Cgroup, dst netip.AddrPort) int {
		pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg}.Run(t)
		if len(res) != 1 || !strings.HasSuffix(res[0], "=ok") {
			t.Fatalf("connect %s: %v", dst, res)
		}
		return pid
	}

	t.Run("allowed by a staged rule", func(t *testing.T) {
		e := events(t, connect(t, staged, open), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "staged-only/egress[0]" || e.Scope.Policy != "staged-only" || e.Scope.Staged != nil {
			t.Errorf("scope %+v, want allowed by staged-only/egress[0]", e.Scope)
		}
	})
	t.Run("outside a staged scope", func(t *testing.T) {
		e := events(t, connect(t, staged, other), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "would_violate" || e.Scope.Policy != "staged-only" ||
			e.Scope.Reason != "no egress rule of staged-only allows "+other.String() {
			t.Errorf("scope %+v, want would_violate of staged-only naming %s", e.Scope, other)
		}
	})
	t.Run("pending in a staged scope", func(t *testing.T) {
		evs := events(t, connect(t, staged, tlsSrv.Addr), 2)
		c, v := evs[0], evs[1]
		if c.Kind != "connect" || c.Scope == nil || c.Scope.Verdict != "pending" {
			t.Errorf("connect %+v, want pending", c)
		}
		if v.Kind != "verdict" || v.Conn != c.Conn || v.Scope == nil || v.Scope.Verdict != "would_violate" || !strings.Contains(v.Scope.Reason, "ClientHello") {
			t.Errorf("closing event %+v (scope %+v), want would_violate on conn %s", v, v.Scope, c.Conn)
		}
	})
	t.Run("staged beside enforced", func(t *testing.T) {
		e := events(t, connect(t, both, wide), 1)[0]
		if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "both/egress[0]" || e.Scope.Policy != "both" {
			t.Fatalf("scope %+v, want allowed by both/egress[0]", e.Scope)
		}
		if st := e.Scope.Staged; st == nil || st.Verdict != "would_violate" || st.Policy != "both-next" || st.Reason != "no egress rule of both-next allows "+wide.String() {
			t.Errorf("staged %+v, want would_violate of both-next", st)
		}
		e = events(t, connect(t, both, open), 1)[0]
		if st := e.Scope.Staged; e.Scope.Verdict != "allowed" || st == nil || st.Verdict != "allowed" || st.Rule != "both-next/egress[0]" {
			t.Errorf("scope %+v staged %+v, want allowed by both/egress[0] and both-next/egress[0]", e.Scope, st)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		for series, want := range map[string]string{
			`callscope_verdicts_total{verdict="would_violate"}`:                            "3",
			`callscope_verdicts_total{verdict="violation"}`:                                "0",
			`callscope_violations_total`:                                                   "0",
			`callscope_rule_hits_total{policy="staged-only",rule="staged-only/egress[0]"}`: "1",
			`callscope_rule_hits_total{policy="staged-only",rule="staged-only/egress[1]"}`: "0",
			`callscope_rule_hits_total{policy="both",rule="both/egress[0]"}`:               "2",
			`callscope_rule_hits_total{policy="both-next",rule="both-next/egress[0]"}`:     "1",
			`callscope_rule_hits_overflow_total`:                                           "0",
		} {
			var got string
			deadline := time.Now().Add(5 * time.Second)
			for got = a.metric(t, series); got != want && time.Now().Before(deadline); got = a.metric(t, series) {
				time.Sleep(50 * time.Millisecond)
			}
			if got != want {
				t.Errorf("%s = %q, want %s", series, got, want)
			}
		}
	})
}
