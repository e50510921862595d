package scope

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
)

// Resource is the CallScope kind served by the API server: cluster-scoped
// objects whose spec is a CallScope document's (deploy/kubernetes/crd-callscopes.yaml).
var Resource = schema.GroupVersionResource{Group: "callscope.dev", Version: "v1alpha1", Resource: "callscopes"}

// Objects keeps the CallScope objects of a cluster in force next to the
// policy files. Each object goes through the parser and its checks as a
// one-document file would. The rules:
//
//   - An object the parser refuses is skipped, with one log line naming
//     it and each problem's field, and counted. If an earlier version of
//     it was in force, that version stays, as the running policies stay
//     when a file stops loading; an object refused since the agent first
//     saw it binds nothing.
//   - A file's name wins: an object named as a policy of a file is
//     skipped, as refused, for as long as the file has that name.
//   - A deleted object stops binding with the next batch judged.
//   - While the API server cannot be reached, the objects last read stay
//     in force; the watch is retried.
//
// Objects are read with a dynamic informer on unstructured objects: the
// parser reads them anyway, so typed objects, which would need generated
// clients, deep copies and listers, would be decoded only to be thrown
// away.
type Objects struct {
	p   *Policies
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*objectEntry // by object name; guarded by mu

	changed  chan struct{} // the objects in force changed; room for one
	synced   chan struct{} // closed once the first list is in force
	done     chan struct{} // closed once the informer and worker stopped
	inSync   atomic.Bool   // listed once, and the watch is up
	down     atomic.Bool   // the last list or watch failed
	rejected atomic.Uint64
	failures atomic.Uint64
}

type objectEntry struct {
	resourceVersion string
	// inForce is the last version of the object that the parser took;
	// nil if none has been.
	inForce *Policy
	// refused lists the problems of the object as the API server holds
	// it; nil when inForce is that version.
	refused Errors
	// clash is the position of the file's policy that has the object's
	// name, while it has it.
	clash string
}

// ObjectStats counts CallScope objects.
type ObjectStats struct {
	// Objects by state: Valid ones are in force as the API server holds
	// them; Stale ones are refused as the API server holds them, and their
	// last valid version is in force; Invalid ones bind nothing (refused
	// since first seen, or named as a file's policy).
	Valid, Stale, Invalid int
	// Rejected counts the object versions refused, a name taken by a file
	// included.
	Rejected uint64
	// WatchFailures counts the list and watch requests that failed.
	WatchFailures uint64
	// Synced says the objects were read and the watch is up: what is in
	// force is what the API server holds.
	Synced bool
}

// WithoutFiles returns Policies that read no file: none are in force
// until WatchObjects adds the cluster's. A nil log logs nothing.
func WithoutFiles(log *slog.Logger) *Policies {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Policies{log: log.With("component", "policy"), watcherDone: make(chan struct{})}
	close(p.watcherDone)
	p.install(nil)
	return p
}

// WatchObjects adds the cluster's CallScope objects to the policies in
// force, and keeps them in force (see Objects) until ctx ends. It returns
// at once: until the objects are first read, the files' policies alone
// are in force; Synced says when they are.
func (p *Policies) WatchObjects(ctx context.Context, client dynamic.Interface) (*Objects, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.fixed:
		return nil, errors.New("watch CallScope objects: these policies are fixed")
	case p.objects != nil:
		return nil, errors.New("watch CallScope objects: already watched")
	}
	o := &Objects{
		p:       p,
		log:     p.log,
		entries: map[string]*objectEntry{},
		changed: make(chan struct{}, 1),
		synced:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	p.objects = o

	res := client.Resource(Resource)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			list, err := res.List(ctx, opts)
			o.answered(err)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (apiwatch.Interface, error) {
			w, err := res.Watch(ctx, opts)
			o.answered(err)
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, &unstructured.Unstructured{}, cache.SharedIndexInformerOptions{})
	// The informer retries on its own; this only says so, once per outage.
	inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
			o.unreachable(err)
		}
	})
	// Who wrote which field is of no use here, and can be most of an object.
	inf.SetTransform(func(obj any) (any, error) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			u.SetManagedFields(nil)
		}
		return obj, nil
	})
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.put(obj) },
		UpdateFunc: func(_, obj any) { o.put(obj) },
		DeleteFunc: o.remove,
	})
	if err != nil {
		return nil, fmt.Errorf("watch CallScope objects: %w", err)
	}

	var wg sync.WaitGroup
	wg.Go(func() { inf.RunWithContext(ctx) })
	wg.Go(func() { o.work(ctx, reg.HasSynced) })
	go func() {
		wg.Wait()
		close(o.done)
	}()
	return o, nil
}

// work puts the objects in force once they are all read, then again each
// time they change. A burst of changes makes one rebuild, or two.
func (o *Objects) work(ctx context.Context, listed func() bool) {
	if !cache.WaitForCacheSync(ctx.Done(), listed) {
		return
	}
	o.inSync.Store(!o.down.Load())
	o.rebuild("CallScope objects read")
	close(o.synced)
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.changed:
			o.rebuild("CallScope objects changed")
		}
	}
}

func (o *Objects) rebuild(msg string) {
	p := o.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rebuild()
	st := o.Stats()
	p.log.Info(msg, "scopes", p.Len(), "policy_version", p.Current().Version(), "generation", p.Generation(),
		"objects_valid", st.Valid, "objects_stale", st.Stale, "objects_invalid", st.Invalid)
}

// Synced is closed once the objects were first read and put in force.
func (o *Objects) Synced() <-chan struct{} { return o.synced }

// Done is closed once the watch has stopped, after ctx ended.
func (o *Objects) Done() <-chan struct{} { return o.done }

// Stats counts the objects by state; nil Objects have none.
func (o *Objects) Stats() ObjectStats {
	if o == nil {
		return ObjectStats{}
	}
	st := ObjectStats{Rejected: o.rejected.Load(), WatchFailures: o.failures.Load(), Synced: o.inSync.Load()}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range o.entries {
		switch {
		case e.clash != "" || e.inForce == nil:
			st.Invalid++
		case e.refused != nil:
			st.Stale++
		default:
			st.Valid++
		}
	}
	return st
}

// answered notes how a list or watch request went.
func (o *Objects) answered(err error) {
	if err != nil {
		o.failures.Add(1)
		o.unreachable(err)
		return
	}
	if o.down.Swap(false) {
		o.log.Info("CallScope objects: the API server answers again")
	}
	select {
	case <-o.synced:
		o.inSync.Store(true)
	default:
	}
}

func (o *Objects) unreachable(err error) {
	o.inSync.Store(false)
	if o.down.Swap(true) {
		return
	}
	attrs := []any{"err", err}
	switch {
	case apierrors.IsNotFound(err):
		attrs = append(attrs, "hint", "is the CallScope CRD installed? (deploy/kubernetes/crd-callscopes.yaml)")
	case apierrors.IsForbidden(err):
		attrs = append(attrs, "hint", "the agent's ClusterRole needs list and watch on callscopes.callscope.dev")
	}
	select {
	case <-o.synced:
		o.log.Warn("CallScope objects: cannot reach the API server; the objects last read stay in force, retrying", attrs...)
	default:
		o.log.Warn("CallScope objects: cannot read them from the API server; the policy files alone are in force until it answers, retrying", attrs...)
	}
}

// put takes a new or changed object.
func (o *Objects) put(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		o.log.Error("CallScope objects: the informer gave something else", "type", fmt.Sprintf("%T", obj))
		return
	}
	name, rv := u.GetName(), u.GetResourceVersion()
	o.mu.Lock()
	e := o.entries[name]
	same := e != nil && e.resourceVersion == rv
	o.mu.Unlock()
	if same {
		// A relist after a lost watch brings every object again.
		return
	}
	policy, problems := parseObject(u)

	o.mu.Lock()
	defer o.mu.Unlock()
	if e == nil {
		e = &objectEntry{}
		o.entries[name] = e
	}
	e.resourceVersion = rv
	if problems != nil {
		e.refused = problems
		o.rejected.Add(1)
		what := "it binds nothing"
		if e.inForce != nil {
			what = "its last valid version stays in force"
		}
		o.log.Error("CallScope object refused; "+what, "object", name, "resource_version", rv,
			"problems", len(problems), "err", objectProblems(name, problems))
		return // nothing in force changed
	}
	if e.refused != nil {
		o.log.Info("CallScope object valid again", "object", name, "resource_version", rv)
	}
	e.refused = nil
	// A name a file takes is checked, and told, again for each version.
	clashed := e.clash != ""
	e.clash = ""
	if e.inForce != nil && reflect.DeepEqual(*e.inForce, policy) {
		if clashed {
			o.signal()
		}
		return
	}
	e.inForce = &policy
	o.signal()
}

// remove forgets a deleted object.
func (o *Objects) remove(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		o.log.Error("CallScope objects: the informer gave something else", "type", fmt.Sprintf("%T", obj))
		return
	}
	o.mu.Lock()
	delete(o.entries, u.GetName())
	o.mu.Unlock()
	o.signal()
}

func (o *Objects) signal() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// inForce lists the objects' policies to put in force with files, by
// name, leaving out those a file names. It is called with o.p.mu held.
func (o *Objects) inForce(files []Policy) []Policy {
	taken := make(map[string]Position, len(files))
	for _, f := range files {
		taken[f.Name] = f.Source
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	names := make([]string, 0, len(o.entries))
	for name, e := range o.entries {
		if e.inForce != nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := make([]Policy, 0, len(names))
	for _, name := range names {
		e := o.entries[name]
		if pos, clash := taken[name]; clash {
			if e.clash == "" {
				e.clash = pos.String()
				o.rejected.Add(1)
				o.log.Error("CallScope object refused; it binds nothing", "object", name, "resource_version", e.resourceVersion, "problems", 1,
					"err", fmt.Sprintf("callscope %s: metadata.name: %s is taken by the CallScope at %s, which wins", name, quote(name), e.clash))
			}
			continue
		}
		if e.clash != "" {
			e.clash = ""
			o.log.Info("CallScope object in force: no file names it any more", "object", name, "resource_version", e.resourceVersion)
		}
		out = append(out, *e.inForce)
	}
	return out
}

// parseObject reads an object as a one-document file: its apiVersion,
// kind, name and spec, and whatever else it holds at the top, which the
// parser refuses as a file's unknown field.
func parseObject(u *unstructured.Unstructured) (Policy, Errors) {
	name := u.GetName()
	file := "callscope/" + name
	doc := make(map[string]any, len(u.Object))
	for k, v := range u.Object {
		if k != "metadata" {
			doc[k] = v
		}
	}
	doc["metadata"] = map[string]any{"name": name}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return Policy{}, Errors{{Pos: Position{File: file}, Msg: "cannot be written as YAML: " + err.Error()}}
	}
	policies, err := Parse(file, data)
	var perr *Errors
	switch {
	case errors.As(err, &perr):
		return Policy{}, *perr
	case err != nil:
		return Policy{}, Errors{{Pos: Position{File: file}, Msg: err.Error()}}
	case len(policies) != 1:
		return Policy{}, Errors{{Pos: Position{File: file}, Msg: "holds no CallScope"}}
	}
	// Lines of a document written here would point nowhere.
	policy := policies[0]
	policy.Source = Position{File: file}
	for i := range policy.Egress {
		policy.Egress[i].Source = policy.Source
	}
	return policy, nil
}

// objectProblems says what is wrong with an object on one line, each
// problem at the path of its field in the object.
func objectProblems(name string, errs Errors) string {
	parts := make([]string, len(errs))
	for i, e := range errs {
		field := e.Field
		// The parser names the fields of spec from spec down.
		if strings.HasPrefix(field, "subject") || strings.HasPrefix(field, "egress") {
			field = "spec." + field
		}
		if field == "" {
			parts[i] = fmt.Sprintf("callscope %s: %s", name, e.Msg)
		} else {
			parts[i] = fmt.Sprintf("callscope %s: %s: %s", name, field, e.Msg)
		}
	}
	return strings.Join(parts, "; ")
}

// WaitSynced waits up to timeout for the objects to be first read and put
// in force, and says whether they were.
func (o *Objects) WaitSynced(ctx context.Context, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-o.synced:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}
