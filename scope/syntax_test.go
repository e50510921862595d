package scope

import (
	"reflect"
	"strings"
	"testing"
)

// TestParseSyntaxErrors checks that a syntax error is reported on the
// line and column where the parser saw it, and with where the construct it
// was reading began, also where yaml.v3's own message is wrong or silent.
func TestParseSyntaxErrors(t *testing.T) {
	const head = docHead + "a\nspec:\n" // lines 1 to 5
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"tab for indentation", head + "  subject:\n\tnamespace: x\n",
			"p.yaml:7:1: invalid YAML: found character that cannot start any token; YAML is indented with spaces, not tabs"},
		{"unclosed quote", head + "  subject: {exe: \"/bin/x}\n  egress: []\n",
			"p.yaml:8:1: invalid YAML: found unexpected end of stream at the end of the file (while scanning a quoted scalar that begins at 6:18)"},
		{"unclosed bracket", head + "  subject: {exe: x}\n  egress: [{to: [{cidr: 10.0.0.0/8}]}\nmore: x\n",
			"p.yaml:8:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that begins at 7:11)"},
		{"bad indentation", head + "  subject:\n    exe: x\n   egress: []\n",
			"p.yaml:8:4: invalid YAML: did not find expected key (while parsing a block mapping that begins at 6:3)"},
		{"value after a key on its line", head + "  subject: exe: x\n",
			"p.yaml:6:15: invalid YAML: mapping values are not allowed in this context"},
		{"document separator with content", head + "  subject: {exe: x}\n--- kind: CallScope\n",
			"p.yaml:7:9: invalid YAML: mapping values are not allowed in this context"},
		{"error on the first line", "apiVersion: [\n",
			"p.yaml:2:1: invalid YAML: did not find expected node content at the end of the file"},
		{"first line, not at its end", "kind: a: b\n",
			"p.yaml:1:8: invalid YAML: mapping values are not allowed in this context"},
		{"CRLF line endings", strings.ReplaceAll(head+"  subject: {exe: x}\n  egress: [{to: [{cidr: 10.0.0.0/8}]}\nmore: x\n", "\n", "\r\n"),
			"p.yaml:8:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that begins at 7:11)"},
		{"CRLF and a tab", "kind: CallScope\r\nspec:\r\n\tsubject: x\r\n",
			"p.yaml:3:1: invalid YAML: found character that cannot start any token; YAML is indented with spaces, not tabs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.yaml))
			if got := problems(t, err); !reflect.DeepEqual(got, []string{tc.want}) {
				t.Errorf("Parse errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), tc.want)
			}
		})
	}
}
