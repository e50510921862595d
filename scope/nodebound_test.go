package scope

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// treeNodes counts the nodes yaml.v3 makes of a document, aliases as one
// node each: what the tree holds, not what it expands to.
func treeNodes(n *yaml.Node) int {
	count := 1
	for _, c := range n.Content {
		count += treeNodes(c)
	}
	return count
}

// checkBound fails unless documentBounds charges each document of data at
// least the nodes yaml.v3 makes of it, including those it made before it
// failed (which the bound must cover as well, as they are allocated).
func checkBound(t *testing.T, data []byte) {
	t.Helper()
	var bounds []docBound
	documentBounds(data, func(d docBound) bool { bounds = append(bounds, d); return true })
	// The documents yaml.v3 reads, by the bound they fall in: the one
	// holding the line where they start.
	used := make([]int, len(bounds))
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := decode(dec, &doc)
		if errors.Is(err, io.EOF) || err != nil {
			// A failed document's nodes are garbage once it fails; the
			// scan must still have covered what came before.
			break
		}
		i := len(bounds) - 1
		for i > 0 && bounds[i].line > doc.Line {
			i--
		}
		used[i] += treeNodes(&doc)
		if used[i] > bounds[i].nodes {
			t.Fatalf("document at line %d of %.200q: %d nodes, bound %d", bounds[i].line, data, used[i], bounds[i].nodes)
		}
	}
}

// boundCorpus is YAML of every shape at hand: policies, the fuzz seeds,
// hostile files and odd corners of the syntax.
func boundCorpus(t testing.TB) [][]byte {
	var corpus [][]byte
	files, _ := filepath.Glob("testdata/*.yaml")
	examples, _ := filepath.Glob("../deploy/examples/*.yaml")
	for _, f := range append(files, examples...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		corpus = append(corpus, data)
	}
	seeds, _ := filepath.Glob("testdata/fuzz/FuzzParse/*")
	for _, f := range seeds {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// One []byte("...") line after the header.
		_, body, _ := strings.Cut(string(data), "\n")
		body = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(body), "[]byte("), ")")
		s, err := strconv.Unquote(body)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		corpus = append(corpus, []byte(s))
	}
	for _, s := range []string{
		benchPoliciesYAML(0, 20), aliasBomb(),
		"{a,a,a}", "{a, b, c: d, e}", "[a, b: c, : d, ? e, ?]", "[: a]", "{: a}", "{? }", "[?]",
		"{a:b}", `{"a":b, "c":, 'd':e}`, "[*x:b]", "- &x a\n- [*x:b]\n- {*x: c}\n- *x :d",
		"a:\nb:\n: c\n:\n", "- \n-\n- - \n  -\n", "? a\n? b\n: c\n?\n", "a: &x\nb: !!str\nc: &y !!str\n",
		"---\n---\n...\n---\n", "--- a\n... \n--- [b]\n...\n", "%YAML 1.2\n---\na: b\n...\n%YAML 1.2\n--- c\n",
		"a: |\n  - b\n  c: d\n---\ne: f\n", "a: >-\n  x\n\n  y\nb: \"q: [1,\n  2]\"\n", "a: 'it''s: [x]'\n",
		"a: b # c: [d]\n#: e\n", "key: [a, {b: c}, [d, e], f: g]\n", "- - - a\n    - b\n  - c\n", "a:\n- b\n- c\nd: e\n",
		"\xef\xbb\xbfa: b\n", "a: b\r\n---\r\nc: d\r\n", "a: b\rc: d\r", "a:\u2028- b\u2029c: d\u0085- e",
		"\xff\xfea\x00:\x00 \x00b\x00\n\x00-\x00-\x00-\x00\n\x00-\x00 \x00c\x00\n\x00",
		"[-1, -a, - , -]", "{a: -, b: -1}", "a: -\nb: - c", "? - a\n  - b\n: - c\n", "&a [*a]", "!t &a : b",
		"[a, &b , c]", "{&a : b, *a : c}", "[a,,b]", "{a,,}", "a:b: c", "a: b: c", "[a]: b\n{c: d}: e\n\"f\": g\n",
	} {
		corpus = append(corpus, []byte(s))
	}
	return corpus
}

func TestNodeBoundCoversTheTree(t *testing.T) {
	for _, data := range boundCorpus(t) {
		checkBound(t, data)
	}
}

// FuzzNodeBound looks for YAML that yaml.v3 makes more nodes of than
// documentBounds charges: the memory bound of Parse rests on there being none.
func FuzzNodeBound(f *testing.F) {
	for _, data := range boundCorpus(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		checkBound(t, data)
	})
}
