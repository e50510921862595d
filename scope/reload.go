package scope

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce is how long the files must stay quiet before a reload: an
// editor's save or a ConfigMap update is a burst of events.
var debounce = 200 * time.Millisecond

// Policies are the CallScopes in force. A reload compiles a new Matcher and
// swaps it in whole; a policy that does not load leaves the running one in
// force. Its methods may be called from any goroutine, but a Matcher, which
// caches, must be used from one goroutine only.
type Policies struct {
	cur         atomic.Pointer[Matcher]
	generation  atomic.Uint64
	ok, failed  atomic.Uint64
	paths       []string
	log         *slog.Logger
	mu          sync.Mutex // one change at a time
	loaded      []Policy   // the files' policies in force; guarded by mu
	objects     *Objects   // the cluster's, when watched; guarded by mu
	fixed       bool       // made by NewPolicies
	watcherDone chan struct{}
}

// NewPolicies returns policies fixed to m: Reload does nothing, and
// nothing is logged.
func NewPolicies(m *Matcher) *Policies {
	p := &Policies{log: slog.New(slog.DiscardHandler), watcherDone: make(chan struct{}), fixed: true}
	p.cur.Store(m)
	p.generation.Store(1)
	close(p.watcherDone)
	return p
}

// Watch loads the CallScope files and folders at paths (as Load does) and
// keeps them in force: it reloads them when anything under them changes,
// and on Reload. It watches the paths' parent folders too, to see a file
// replaced by a rename (as editors save) or a Kubernetes ConfigMap volume
// swapping its ..data link. A policy that does not load at start is
// returned as the error, an *Errors when the policies themselves are at
// fault. The watch ends with ctx; Reloads counts the reloads by result.
// A nil log logs nothing.
func Watch(ctx context.Context, paths []string, log *slog.Logger) (*Policies, error) {
	if len(paths) == 0 {
		return nil, errors.New("watch policies: no path given")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Policies{
		paths:       paths,
		log:         log.With("component", "policy"),
		watcherDone: make(chan struct{}),
	}

	// Watch before the first load, so that no change falls between them.
	w, err := fsnotify.NewWatcher()
	var ws *watchSet
	if err != nil {
		p.log.Warn("cannot watch policy files; they reload on SIGHUP only", "err", err)
	} else if ws, err = newWatchSet(w, paths); err != nil {
		w.Close()
		return nil, err
	} else {
		ws.sync(p.log)
	}

	policies, err := Load(paths...)
	release()
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, err
	}
	p.install(policies)
	p.log.Info("policies loaded", "scopes", p.Len(), "policy_version", p.Current().Version(), "paths", paths)

	if w == nil {
		close(p.watcherDone)
		return p, nil
	}
	go p.watch(ctx, w, ws)
	return p, nil
}

// Current is the matcher in force; nil for nil Policies.
func (p *Policies) Current() *Matcher {
	if p == nil {
		return nil
	}
	return p.cur.Load()
}

// Len is the number of CallScopes in force.
func (p *Policies) Len() int {
	if m := p.Current(); m != nil {
		return m.Len()
	}
	return 0
}

// Generation counts the policy sets put in force, the first one included:
// a reload that changes nothing does not count.
func (p *Policies) Generation() uint64 { return p.generation.Load() }

// RuleHits reports the calls each rule in force allowed; see
// [Matcher.RuleHits].
func (p *Policies) RuleHits(fn func(policy, rule string, hits uint64)) (overflow uint64) {
	return p.Current().RuleHits(fn)
}

// Reloads counts the reloads by result: ok (changed or not) and error.
func (p *Policies) Reloads() (ok, failed uint64) { return p.ok.Load(), p.failed.Load() }

// Reload reads the policies again and puts them in force if they load and
// changed. A policy that does not load is logged, problem by problem, and
// returned; the running one stays in force. The agent calls it on SIGHUP.
func (p *Policies) Reload() error {
	if p.paths == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer release()

	start := time.Now()
	policies, err := Load(p.paths...)
	if err != nil {
		var perr *Errors
		if errors.As(err, &perr) {
			for _, e := range *perr {
				p.log.Error("policy problem", "err", e.Error())
			}
			p.log.Error("policy reload failed; the running policies stay in force",
				"problems", len(*perr), "generation", p.Generation())
		} else {
			p.log.Error("policy reload failed; the running policies stay in force",
				"err", err, "generation", p.Generation())
		}
		// Counted once done, so that whoever sees the count change sees
		// the reload's log and policies too.
		p.failed.Add(1)
		return err
	}
	defer p.ok.Add(1) // once done, likewise
	// A reload that changes nothing keeps the matcher and its warm cache:
	// file systems and ConfigMap updates send events that change nothing.
	if reflect.DeepEqual(policies, p.loaded) {
		p.log.Debug("policies unchanged", "scopes", len(policies))
		return nil
	}
	p.install(policies)
	p.log.Info("policies reloaded", "scopes", p.Len(), "policy_version", p.Current().Version(),
		"generation", p.Generation(), "took", time.Since(start))
	return nil
}

// release gives the memory a load no longer needs back to the system now.
// Reading a file takes up to 20 times its size for a moment, and the
// runtime would keep those pages for minutes; a reload is rare, and a
// collection costs about what the reload did.
func release() { debug.FreeOSMemory() }

// install puts the files' policies in force, with the objects'.
func (p *Policies) install(policies []Policy) {
	p.loaded = policies
	p.rebuild()
}

// rebuild compiles the files' policies and the objects' (with p.mu held,
// but for the first install) and swaps the result in.
func (p *Policies) rebuild() {
	all := p.loaded
	if p.objects != nil {
		all = append(slices.Clip(all), p.objects.inForce(p.loaded)...)
	}
	m := Compile(all)
	m.inherit(p.cur.Load())
	p.cur.Store(m)
	p.generation.Add(1)
}

// watch reloads once the watched files have been quiet for debounce.
func (p *Policies) watch(ctx context.Context, w *fsnotify.Watcher, ws *watchSet) {
	defer close(p.watcherDone)
	defer w.Close()
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod || !ws.relevant(ev.Name) {
				continue
			}
			quiet.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			// Most likely the kernel's event queue overflowed: what changed
			// is unknown, so read everything again.
			p.log.Warn("watching policy files", "err", err)
			quiet.Reset(debounce)
		case <-quiet.C:
			// Watch new folders before reading them, so that a file
			// written into one after the reload is not missed.
			ws.sync(p.log)
			p.Reload()
		}
	}
}

// watchSet keeps an fsnotify watch on what a reload depends on: each
// folder given and the folders under it, the folder holding each path, and
// the folder holding the file a path links to.
type watchSet struct {
	w       *fsnotify.Watcher
	paths   []string // absolute, cleaned
	targets []string // where file paths that are links lead, as of the last sync
}

func newWatchSet(w *fsnotify.Watcher, paths []string) (*watchSet, error) {
	ws := &watchSet{w: w}
	for _, path := range paths {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("watch policies: %w", err)
		}
		ws.paths = append(ws.paths, abs)
	}
	return ws, nil
}

// sync brings the watches in line with what the paths are now. A folder
// created, removed or swapped since the last sync is watched anew.
func (ws *watchSet) sync(log *slog.Logger) {
	want := map[string]bool{}
	ws.targets = ws.targets[:0]
	for _, path := range ws.paths {
		want[filepath.Dir(path)] = true
		info, err := os.Stat(path)
		if err != nil {
			// Gone for now; its parent's watch sees it come back.
			continue
		}
		if !info.IsDir() {
			if target, err := filepath.EvalSymlinks(path); err == nil && target != path {
				ws.targets = append(ws.targets, target)
				want[filepath.Dir(target)] = true
			}
			continue
		}
		want[path] = true
		// Walk the folders as Load does, through a link at the top and
		// past hidden ones, naming them under path so that events do too.
		top := path + string(filepath.Separator)
		filepath.WalkDir(top, func(name string, d fs.DirEntry, err error) error {
			if err != nil || name == top || !d.IsDir() {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			want[name] = true
			return nil
		})
	}

	have := map[string]bool{}
	for _, name := range ws.w.WatchList() {
		have[name] = true
		if !want[name] {
			ws.w.Remove(name)
		}
	}
	for name := range want {
		if have[name] {
			continue
		}
		if err := ws.w.Add(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cannot watch policy folder; changes in it need SIGHUP", "path", name, "err", err)
		}
	}
}

// relevant reports whether an event on name may change what Load reads,
// leaving out the rest of what happens in the parent folders.
func (ws *watchSet) relevant(name string) bool {
	for _, path := range ws.paths {
		if within(name, path) {
			return true
		}
		// A ConfigMap volume swaps its files at once by renaming a new
		// ..data link over the old one, next to the links we were given.
		if filepath.Dir(name) == filepath.Dir(path) && strings.HasPrefix(filepath.Base(name), "..") {
			return true
		}
	}
	for _, target := range ws.targets {
		if within(name, target) {
			return true
		}
	}
	return false
}

func within(name, path string) bool {
	return name == path || strings.HasPrefix(name, path+string(filepath.Separator))
}
