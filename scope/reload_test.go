package scope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/israce"
)

// syncBuffer is a log the watcher writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type watched struct {
	*Policies
	log *syncBuffer
}

func watch(t *testing.T, paths ...string) watched {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := watched{log: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := Watch(ctx, paths, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-p.watcherDone
	})
	w.Policies = p
	return w
}

// waitFor polls until cond holds; the watcher waits debounce after the
// last change before it reloads.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scopeNames lists the CallScopes in force.
func scopeNames(p *Policies) []string {
	var out []string
	for _, cp := range p.Current().policies {
		out = append(out, cp.name)
	}
	slices.Sort(out)
	return out
}

func inForce(p *Policies, want ...string) func() bool {
	return func() bool { return slices.Equal(scopeNames(p), want) }
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const badCIDR = docHead + "bad\nspec:\n  subject: {namespace: x}\n  egress: [{to: [{cidr: 10.0.0.0/33}]}]\n"

func TestWatchFolder(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": policyDoc("a"), "notes.txt": "x"})
	p := watch(t, dir)
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"a"}) || p.Len() != 1 || p.Generation() != 1 {
		t.Fatalf("at start: %v, generation %d", got, p.Generation())
	}
	generation := p.Generation()
	newGeneration := func() {
		t.Helper()
		if g := p.Generation(); g <= generation {
			t.Errorf("generation %d after a change, was %d", g, generation)
		}
		generation = p.Generation()
	}

	write(t, filepath.Join(dir, "b.yaml"), policyDoc("b"))
	waitFor(t, "b in force", inForce(p.Policies, "a", "b"))
	newGeneration()

	// A bad file leaves the running policies in force.
	write(t, filepath.Join(dir, "c.yaml"), badCIDR)
	waitFor(t, "the reload to fail", func() bool { _, failed := p.Reloads(); return failed > 0 })
	// The reload that put b in force is counted before the next begins:
	// one ok, then the error.
	if ok, _ := p.Reloads(); ok != 1 {
		t.Errorf("%d reloads ok before the first failed, want 1", ok)
	}
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("after a bad file: %v", got)
	}
	log := p.log.String()
	wantErr := filepath.Join(dir, "c.yaml") + ":7:25: egress[0].to[0].cidr"
	if !strings.Contains(log, wantErr) || !strings.Contains(log, "running policies stay in force") {
		t.Errorf("log does not name the problem %q:\n%s", wantErr, log)
	}

	write(t, filepath.Join(dir, "c.yaml"), policyDoc("c"))
	waitFor(t, "c in force", inForce(p.Policies, "a", "b", "c"))
	newGeneration()

	// A file in a new subfolder. Creating the folder reloads (to no
	// change) once the folder is watched.
	ok, _ := p.Reloads()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new folder to be watched", func() bool { n, _ := p.Reloads(); return n > ok })
	if g := p.Generation(); g != generation {
		t.Errorf("an empty folder made generation %d", g)
	}
	write(t, filepath.Join(dir, "sub", "d.yaml"), policyDoc("d"))
	waitFor(t, "d in force", inForce(p.Policies, "a", "b", "c", "d"))
	newGeneration()

	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a gone", inForce(p.Policies, "b", "c", "d"))
	newGeneration()
}

// An editor saves by writing a new file and renaming it over the old one,
// which a watch on the file itself would lose.
func TestWatchFileRenamedOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, policyDoc("a"))
	writeFiles(t, dir, map[string]string{"other.yaml": policyDoc("other")})
	p := watch(t, path)

	for i, name := range []string{"b", "c"} {
		tmp := filepath.Join(dir, fmt.Sprintf(".policy.yaml.%d.swp", i))
		write(t, tmp, policyDoc(name))
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		waitFor(t, name+" in force", inForce(p.Policies, name))
	}

	// Files next to the one named do not count.
	write(t, filepath.Join(dir, "other.yaml"), policyDoc("other2"))
	time.Sleep(3 * debounce)
	if ok, _ := p.Reloads(); ok != 2 {
		t.Errorf("%d reloads, want 2", ok)
	}
}

// configMap lays out a ConfigMap volume as the kubelet does: the files live
// in a timestamped folder, reached through the ..data link.
func configMap(t *testing.T, dir, version string, files map[string]string) {
	t.Helper()
	data := filepath.Join(dir, version)
	for name, content := range files {
		writeFiles(t, data, map[string]string{name: content})
		if _, err := os.Lstat(filepath.Join(dir, name)); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// swapConfigMap updates the volume the kubelet's way: a new folder, a new
// link renamed over ..data at once, then the old folder removed.
func swapConfigMap(t *testing.T, dir, old, version string, files map[string]string) {
	t.Helper()
	data := filepath.Join(dir, version)
	for name, content := range files {
		writeFiles(t, data, map[string]string{name: content})
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if _, err := os.Lstat(filepath.Join(dir, name)); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
		t.Fatal(err)
	}
}

func TestWatchConfigMap(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(dir string) string
	}{
		{"folder", func(dir string) string { return dir }},
		{"file", func(dir string) string { return filepath.Join(dir, "policies.yaml") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			configMap(t, dir, "..2026_11_27_04_00_00.1", map[string]string{"policies.yaml": policyDoc("a")})
			if err := os.Symlink("..2026_11_27_04_00_00.1", filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			p := watch(t, tc.path(dir))
			if got := scopeNames(p.Policies); !slices.Equal(got, []string{"a"}) {
				t.Fatalf("at start: %v", got)
			}

			swapConfigMap(t, dir, "..2026_11_27_04_00_00.1", "..2026_11_27_04_05_00.2",
				map[string]string{"policies.yaml": policyDoc("a") + "---\n" + policyDoc("b")})
			waitFor(t, "the new ConfigMap in force", inForce(p.Policies, "a", "b"))

			// Again, now that the first folder is gone.
			swapConfigMap(t, dir, "..2026_11_27_04_05_00.2", "..2026_11_27_04_10_00.3",
				map[string]string{"policies.yaml": policyDoc("c")})
			waitFor(t, "the third ConfigMap in force", inForce(p.Policies, "c"))
		})
	}
}

// A ConfigMap swap is a burst of events: it makes one reload.
func TestWatchDebounces(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": policyDoc("a")})
	p := watch(t, dir)
	for i := range 20 {
		write(t, filepath.Join(dir, "a.yaml"), policyDoc(fmt.Sprintf("a%d", i)))
		time.Sleep(debounce / 20)
	}
	waitFor(t, "a19 in force", inForce(p.Policies, "a19"))
	time.Sleep(2 * debounce)
	// One, unless the machine is so busy that the writes came apart.
	if ok, _ := p.Reloads(); ok > 3 {
		t.Errorf("%d reloads for one burst of writes", ok)
	}
}

func TestWatchRefusesBadStart(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": policyDoc("a"), "c.yaml": badCIDR})
	before := runtime.NumGoroutine()
	_, err := Watch(context.Background(), []string{dir}, slog.New(slog.DiscardHandler))
	var perr *Errors
	if !errors.As(err, &perr) || !strings.Contains(err.Error(), "c.yaml:7:25") {
		t.Fatalf("Watch = %v, want the problems of c.yaml", err)
	}
	if _, err := Watch(context.Background(), []string{filepath.Join(dir, "missing")}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := Watch(context.Background(), nil, nil); err == nil {
		t.Error("no path: no error")
	}
	waitFor(t, "no goroutine left", func() bool { return runtime.NumGoroutine() <= before })
}

func TestReloadOnDemand(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": policyDoc("a")})
	p := watch(t, dir)
	before := p.Current()

	// Nothing changed: the matcher, and its cache, stay.
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if p.Current() != before || p.Generation() != 1 {
		t.Error("a reload that changed nothing replaced the matcher")
	}

	// Reload does not wait for the watcher.
	write(t, filepath.Join(dir, "a.yaml"), policyDoc("a")+"---\n"+policyDoc("b"))
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("after Reload: %v", got)
	}

	write(t, filepath.Join(dir, "a.yaml"), badCIDR)
	var perr *Errors
	if err := p.Reload(); !errors.As(err, &perr) {
		t.Errorf("Reload = %v, want *Errors", err)
	}
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("after a bad Reload: %v", got)
	}
}

func TestNewPolicies(t *testing.T) {
	m := Compile(benchPolicies(3))
	p := NewPolicies(m)
	if p.Current() != m || p.Len() != 3 || p.Generation() != 1 || p.Reload() != nil {
		t.Error("fixed policies")
	}
	var none *Policies
	if none.Current() != nil || none.Len() != 0 {
		t.Error("nil policies")
	}
}

func TestWatchStops(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": policyDoc("a"), "sub/b.yaml": policyDoc("b")})
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	p, err := Watch(ctx, []string{dir, filepath.Join(dir, "a.yaml")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.NumGoroutine() <= before {
		t.Error("no watcher running")
	}
	cancel()
	select {
	case <-p.watcherDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not stop")
	}
	waitFor(t, "no goroutine left", func() bool { return runtime.NumGoroutine() <= before })
	// The policies stay usable, and reload on demand.
	write(t, filepath.Join(dir, "c.yaml"), policyDoc("c"))
	if err := p.Reload(); err != nil || p.Len() != 3 {
		t.Errorf("Reload after stop: %v, %d scopes", err, p.Len())
	}
}

// BenchmarkReload reads, compiles and swaps in 1,000 CallScopes spread
// over 10 files.
func BenchmarkReload(b *testing.B) {
	dir := b.TempDir()
	for f := range 10 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.yaml", f)), []byte(benchPoliciesYAML(f*100, 100)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := Watch(ctx, []string{dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	if p.Len() != 1000 {
		b.Fatalf("%d scopes", p.Len())
	}
	// Stop the watcher: the benchmark changes a file on every round.
	cancel()
	<-p.watcherDone

	extra := filepath.Join(dir, "extra.yaml")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		b.StopTimer()
		if err := os.WriteFile(extra, []byte(policyDoc(fmt.Sprintf("extra-%d", i))), 0o644); err != nil {
			b.Fatal(err)
		}
		i++
		b.StartTimer()
		if err := p.Reload(); err != nil {
			b.Fatal(err)
		}
	}
	if p.Len() != 1001 {
		b.Fatalf("%d scopes", p.Len())
	}
}

// TestReloadGivesMemoryBack checks that a reload hands what it took for a
// moment back to the system at once, whether the new policies load or not,
// instead of leaving the pages with the runtime.
func TestReloadGivesMemoryBack(t *testing.T) {
	if testing.Short() {
		t.Skip("parses megabytes")
	}
	if israce.Enabled {
		t.Skip("the race detector keeps memory of its own: the heap figures mean nothing under it")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	write(t, file, policyDoc("a"))
	p := watch(t, dir)
	for _, tc := range hostileFiles {
		if tc.name != "a full file of CallScopes" && tc.name != "flow mappings of keys alone" {
			continue
		}
		// Reload, not the watcher, reads the file: it is renamed in place.
		tmp := filepath.Join(t.TempDir(), "a.yaml")
		write(t, tmp, string(tc.make()))
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
		p.Reload()
		s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
		metrics.Read(s)
		if kept := s[0].Value.Uint64(); kept > 1<<20 {
			t.Errorf("%s: the runtime keeps %d free bytes of heap after the reload", tc.name, kept)
		}
	}
}
