package scope

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Hostile files must fail, quickly and without exhausting memory or the
// stack; a test that hangs here is a test that fails.

// aliasBomb is the "billion laughs": nine levels of nine aliases each,
// 9^9 strings once expanded, placed where a policy would walk into it.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString(docHead + "bomb\nspec:\n  subject: {namespace: x}\n  anchors:\n")
	b.WriteString(`    - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for i := 1; i < 9; i++ {
		ref := "*l" + string(rune('0'+i-1))
		b.WriteString("    - &l" + string(rune('0'+i)) + " [" + strings.Repeat(ref+",", 8) + ref + "]\n")
	}
	b.WriteString("  egress: *l8\n")
	return b.String()
}

func TestHostileInput(t *testing.T) {
	// Rules made only of valid parts, but multiplied by aliases: a
	// thousand rules of a thousand peers each.
	var multiplied strings.Builder
	multiplied.WriteString(docHead + "many\nspec:\n  subject: {namespace: x}\n  peers: &peers [" +
		strings.Repeat("{cidr: 10.0.0.0/8},", 999) + "{cidr: 10.0.0.0/8}]\n  rule: &rule {to: *peers}\n  egress: [" +
		strings.Repeat("*rule,", 999) + "*rule]\n")

	for _, tc := range []struct {
		name string
		yaml string
		want string // in the error
	}{
		{"alias bomb", aliasBomb(), "p.yaml:1:1: the aliases of the file stand for more than 50000 YAML nodes (values, keys, lists and mappings): not read"},
		{"aliases multiplying valid rules", multiplied.String(), "p.yaml:1:1: the aliases of the file stand for more than 50000 YAML nodes"},
		{"alias cycle", docHead + "loop\nspec: &spec\n  subject: {namespace: x}\n  egress: [{to: *spec}]\n", "p.yaml:7:17: alias *spec is inside the node it names"},
		{"list cycle", docHead + "loop\nspec:\n  subject: {namespace: x}\n  egress: &e [{to: [{cidr: 10.0.0.0/8}]}, *e]\n", "p.yaml:7:43: alias *e is inside the node it names"},
		{"document cycle", "&doc {apiVersion: *doc}\n", "p.yaml:1:19: alias *doc is inside the node it names"},
		{"deep flow sequence", strings.Repeat("[", 20_000), "exceeded max depth"},
		{"deep flow mapping", strings.Repeat("{", 11_000), "exceeded max depth"},
		{"deep block sequence", strings.Repeat("- ", 15_000) + "x\n", "exceeded max depth"},
		{"deep inside a policy", docHead + "deep\nspec:\n  subject: {namespace: " + strings.Repeat("[", 20_000) + "}\n", "exceeded max depth"},
		{"2 MiB", docHead + "big\nspec: {subject: {namespace: x}}\n# " + strings.Repeat("x", 2<<20) + "\n", "p.yaml: larger than 1 MiB: not read"},
		// Refused before yaml.v3 builds anything of them.
		{"a document of a million nodes", "[" + strings.Repeat("1,", 500_000) + "1]", "p.yaml:1: document of more than 25000 YAML nodes (values, keys, lists and mappings): not read; split it into several CallScopes"},
		{"a large document after a small one", docHead + "a\nspec: {subject: {namespace: x}}\n---\n# big\n{" + strings.Repeat("a,", 20_000) + "}", "p.yaml:6: document of more than 25000 YAML nodes"},
		// The decoder keeps what anchors name for the documents after them.
		{"documents whose anchors add up", strings.Repeat("--- &a ["+strings.Repeat("1,", 3_000)+"1]\n", 4) + "--- x\n--- &b [" + strings.Repeat("1,", 3_000) + "1]\n",
			"p.yaml:6: document of more than 25000 YAML nodes (values, keys, lists and mappings), with the 24024 of the documents before it that define anchors: not read; split the file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policies, err := Parse("p.yaml", []byte(tc.yaml))
			if err == nil || policies != nil {
				t.Fatalf("Parse = %d policies, %v; want an error", len(policies), err)
			}
			problems(t, err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse error = %.500v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestFileSizeLimit(t *testing.T) {
	// Just under the limit is read.
	small := docHead + "fits\nspec: {subject: {namespace: x}}\n#"
	small += strings.Repeat("x", maxFileSize-len(small))
	if policies, err := Parse("p.yaml", []byte(small)); err != nil || len(policies) != 1 {
		t.Errorf("Parse of %d bytes = %d policies, %v; want one", len(small), len(policies), err)
	}

	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(small+"xx"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	got := problems(t, err)
	if want := big + ": larger than 1 MiB: not read"; len(got) != 1 || got[0] != want {
		t.Errorf("Load errors = %q, want %q", got, want)
	}
}
