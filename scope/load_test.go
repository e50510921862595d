package scope

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// policyDoc is a valid CallScope document named name.
func policyDoc(name string) string {
	return docHead + name + "\nspec:\n  subject: {namespace: " + name + "}\n  egress: [{to: [{cidr: 10.0.0.0/8}], ports: [443]}]\n"
}

// writeFiles lays out files under dir; a name ending in "@" is a symlink
// to the name it holds.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if link, ok := strings.CutSuffix(path, "@"); ok {
			if err := os.Symlink(content, link); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func names(policies []Policy) []string {
	var out []string
	for _, p := range policies {
		out = append(out, p.Name)
	}
	return out
}

func TestLoadFolder(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"b.yaml":              policyDoc("b1") + "---\n" + policyDoc("b2"),
		"a.yml":               policyDoc("a"),
		"sub/c.yaml":          policyDoc("c"),
		"sub/deeper/d.yaml":   policyDoc("d"),
		"empty.yaml":          "# nothing yet\n",
		".hidden.yaml":        "not: [a, policy",
		".git/config.yaml":    "not: [a, policy",
		"notes.txt":           "not: [a, policy",
		"README.md":           "# policies\n",
		"yaml.d/ignored.json": "{",
		// A mounted ConfigMap: files live in a hidden folder, reached
		// through visible links.
		"cm/..2026_11_27/e.yaml": policyDoc("e"),
		"cm/..data@":             "..2026_11_27",
		"cm/e.yaml@":             "..data/e.yaml",
	})
	got, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := []string{"a", "b1", "b2", "e", "c", "d"}
	if !reflect.DeepEqual(names(got), want) {
		t.Errorf("Load names = %v, want %v", names(got), want)
	}
	if src := got[0].Source; src.File != filepath.Join(dir, "a.yml") || src.Line != 1 {
		t.Errorf("Source = %v, want the start of a.yml", src)
	}
	if src := got[2].Source; src.File != filepath.Join(dir, "b.yaml") || src.Line != 9 {
		t.Errorf("Source = %v, want line 9 of b.yaml", src)
	}

	// A link to the folder is the folder.
	link := filepath.Join(t.TempDir(), "policies")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	got, err = Load(link)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !reflect.DeepEqual(names(got), want) {
		t.Errorf("Load through a link: names = %v, want %v", names(got), want)
	}
	if src := got[0].Source.File; src != filepath.Join(link, "a.yml") {
		t.Errorf("Load through a link: file %q, want it named through the link", src)
	}

	// A file named outright is read whatever its name, and only once.
	writeFiles(t, dir, map[string]string{"extra.txt": policyDoc("x")})
	got, err = Load(filepath.Join(dir, "extra.txt"), dir, filepath.Join(dir, "a.yml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want = []string{"x", "a", "b1", "b2", "e", "c", "d"}
	if !reflect.DeepEqual(names(got), want) {
		t.Errorf("Load names = %v, want %v", names(got), want)
	}
}

func TestLoadDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml":     policyDoc("billing"),
		"sub/b.yaml": "# the same name again\n" + policyDoc("billing"),
	})
	_, err := Load(dir)
	got := problems(t, err)
	want := []string{filepath.Join(dir, "sub/b.yaml") + `:5:9: metadata.name: "billing" is taken by the CallScope at ` + filepath.Join(dir, "a.yaml") + ":4:9"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load errors = %q, want %q", got, want)
	}
}

func TestLoadReportsEveryFile(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": policyDoc("a") + "---\n" + docHead + "Bad\nspec: {subject: {namespace: x}}\n",
		"b.yaml": policyDoc("b") + "---\nkind: [\n",
		"c.yaml": policyDoc("c"),
	})
	policies, err := Load(dir)
	if policies != nil {
		t.Errorf("Load returned policies %v along with an error", names(policies))
	}
	got := problems(t, err)
	want := []string{
		filepath.Join(dir, "a.yaml") + `:12:9: metadata.name: "Bad" is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit`,
		filepath.Join(dir, "b.yaml") + `:10:1: invalid YAML: did not find expected node content at the end of the file`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	var errs *Errors
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &errs) {
		t.Errorf("Load error = %v, want a not-exist error that is no *Errors", err)
	}
}

func TestLoadNothing(t *testing.T) {
	policies, err := Load(t.TempDir())
	if policies != nil || err != nil {
		t.Errorf("Load of an empty folder = %v, %v; want nothing", policies, err)
	}
}
