package exporter

import (
	"slices"
	"testing"
	"time"

	"github.com/callscope/callscope/scope"
)

// A call a staged scope would refuse goes to the events topic, like any
// event, but not to the violations topic: only violations do.
func TestStreamWouldViolateIsNoViolation(t *testing.T) {
	c := newCluster(t)
	env := newSinkEnv(t, c.ListenAddrs(), t.TempDir())
	k := env.start(t)
	s := NewStream(NewEncoder("worker-1", "inst"), nil, k, nil)

	verdicts := []scope.Judgement{
		{Verdict: scope.WouldViolate, Scopes: "billing-next", Mode: scope.Audit}, // seq 1
		{Verdict: scope.Violation, Scopes: "billing-egress"},                     // seq 2
		{Verdict: scope.Allowed, Scopes: "billing-egress", Rule: "billing-egress/egress[0]", Via: scope.ViaCIDR, // seq 3
			Staged: scope.Staged{Verdict: scope.WouldViolate, Scopes: "billing-next"}},
		{Verdict: scope.Violation, Scopes: "billing-egress", Staged: scope.Staged{Verdict: scope.Allowed, Scopes: "billing-next"}}, // seq 4
		{Verdict: scope.Allowed, Scopes: "billing-next", Rule: "billing-next/egress[0]", Via: scope.ViaCIDR, Mode: scope.Audit},    // seq 5
	}
	events := batch(len(verdicts))
	for i := range events {
		events[i].Scope = verdicts[i]
	}
	if err := s.Write(events); err != nil {
		t.Fatal(err)
	}
	// A last violation, after the rest on the same partition (one caller,
	// one key), marks the end of what the violations topic gets.
	last := batch(1)
	last[0].Scope = scope.Judgement{Verdict: scope.Violation, Scopes: "billing-egress"}
	if err := s.Write(last); err != nil {
		t.Fatal(err)
	}
	all := consume(t, c.ListenAddrs(), testTopic, 20*time.Second, atLeast(len(verdicts)+1))
	if len(all) != len(verdicts)+1 {
		t.Errorf("%d events on %s, want %d", len(all), testTopic, len(verdicts)+1)
	}
	violations := consume(t, c.ListenAddrs(), testViolations, 20*time.Second, func(c []consumed) bool {
		return len(c) > 0 && c[len(c)-1].seq == 6
	})
	var seqs []int
	for _, v := range violations {
		seqs = append(seqs, v.seq)
	}
	if !slices.Equal(seqs, []int{2, 4, 6}) {
		t.Errorf("violations topic holds seqs %v, want 2, 4 and 6", seqs)
	}
}
