package scope

import (
	"reflect"
	"testing"
)

// TestExamples keeps the policies shipped in deploy/examples valid.
func TestExamples(t *testing.T) {
	policies, err := Load("../deploy/examples")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := []string{"billing-egress-next", "billing-egress", "host-backups", "host-ci-runners"}
	if !reflect.DeepEqual(names(policies), want) {
		t.Errorf("example policies = %v, want %v", names(policies), want)
	}
	for _, p := range policies {
		checkPolicy(t, p)
	}
}
