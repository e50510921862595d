package scope

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/internal/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

const crdFile = "../deploy/kubernetes/crd-callscopes.yaml"

var crdOnce sync.Once

// cluster is the shared control plane with the CallScope CRD applied.
func cluster(t *testing.T) *kubetest.ControlPlane {
	t.Helper()
	cp := kubetest.Get(t)
	crdOnce.Do(func() { cp.Apply(t, crdFile) })
	return cp
}

func objectDoc(name, spec string) string {
	return docHead + name + "\nspec: " + spec + "\n"
}

func toUnstructured(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	j, err := utilyaml.ToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return u
}

// objectClient makes, changes and deletes CallScope objects as the admin.
type objectClient struct {
	t   *testing.T
	res dynamic.ResourceInterface
}

func objectsOf(t *testing.T, cfg *rest.Config) objectClient {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return objectClient{t, dyn.Resource(Resource)}
}

// create makes an object; the API server has accepted it once it returns.
func (c objectClient) create(name, spec string) {
	c.t.Helper()
	if _, err := c.res.Create(context.Background(), toUnstructured(c.t, objectDoc(name, spec)), metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create %s: %v", name, err)
	}
	c.t.Cleanup(func() { c.res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func (c objectClient) update(name, spec string) {
	c.t.Helper()
	cur, err := c.res.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	u := toUnstructured(c.t, objectDoc(name, spec))
	u.SetResourceVersion(cur.GetResourceVersion())
	if _, err := c.res.Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("update %s: %v", name, err)
	}
}

func (c objectClient) delete(name string) {
	c.t.Helper()
	if err := c.res.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete %s: %v", name, err)
	}
}

// watchObjects watches files (none when dir is "") and the objects the
// API server at cfg serves, until the test ends.
func watchObjects(t *testing.T, cfg *rest.Config, dir string) (watched, *Objects) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := watched{log: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if dir == "" {
		w.Policies = WithoutFiles(log)
	} else {
		p, err := Watch(ctx, []string{dir}, log)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		w.Policies = p
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o, err := w.WatchObjects(ctx, dyn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-w.watcherDone
		<-o.Done()
	})
	return w, o
}

// judge gives the verdict on a connect from exe to dst under the
// policies in force.
func judge(p *Policies, exe, dst string) Judgement {
	ev := enrich.Event{}
	ev.Kind = collector.KindConnect
	ev.Outcome = collector.OutcomeEstablished
	ev.Dst = netip.MustParseAddrPort(dst)
	ev.Process = &enrich.Process{Exe: exe}
	s := NewStage(StageConfig{Policies: p})
	out := s.JudgeBatch([]enrich.Event{ev}, nil, time.Now())
	return out[0].Scope
}

func has(p *Policies, name string) bool { return slices.Contains(scopeNames(p), name) }

func TestObjectsInForce(t *testing.T) {
	cp := cluster(t)
	objs := objectsOf(t, cp.Config)
	dir := t.TempDir()
	fileDoc := docHead + "files-a\nspec:\n  subject: {exe: /app/files}\n  egress: [{to: [{cidr: 10.9.0.0/16}]}]\n"
	write(t, filepath.Join(dir, "a.yaml"), fileDoc)
	p, o := watchObjects(t, cp.Config, dir)
	if !o.WaitSynced(context.Background(), 10*time.Second) {
		t.Fatal("objects not read in 10s")
	}
	if st := o.Stats(); !st.Synced || st.Valid+st.Stale+st.Invalid != 0 {
		t.Fatalf("stats with no object: %+v", st)
	}
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"files-a"}) {
		t.Fatalf("in force at start: %v", got)
	}
	start := p.Current().Version()

	// Created: in force, and judged under a new version, the same as if
	// the object were a file.
	objSpec := "{subject: {exe: /app/obj}, egress: [{to: [{cidr: 10.1.0.0/16}], ports: [443]}]}"
	objs.create("obj-a", objSpec)
	waitFor(t, "obj-a in force", func() bool { return has(p.Policies, "obj-a") })
	j := judge(p.Policies, "/app/obj", "10.1.2.3:443")
	if j.Verdict != Allowed || j.Rule != "obj-a/egress[0]" {
		t.Errorf("call under obj-a: %+v, want allowed by obj-a/egress[0]", j)
	}
	asFiles, err := Parse("f.yaml", []byte(objectDoc("obj-a", objSpec)+"---\n"+fileDoc))
	if err != nil {
		t.Fatal(err)
	}
	if j.PolicyVersion == start || j.PolicyVersion != Version(asFiles) {
		t.Errorf("version %s (was %s), want %s, as for the same policies in files", j.PolicyVersion, start, Version(asFiles))
	}
	if !strings.Contains(p.log.String(), "policy_version="+j.PolicyVersion) {
		t.Errorf("the new version is not logged:\n%s", p.log.String())
	}

	// Changed.
	objs.update("obj-a", "{subject: {exe: /app/obj}, egress: [{to: [{cidr: 10.2.0.0/16}], ports: [443]}]}")
	waitFor(t, "the change in force", func() bool { return judge(p.Policies, "/app/obj", "10.2.0.1:443").Verdict == Allowed })
	if j := judge(p.Policies, "/app/obj", "10.1.2.3:443"); j.Verdict != Violation || j.Scopes != "obj-a" {
		t.Errorf("call outside the changed obj-a: %+v, want a violation", j)
	}
	valid := p.Current().Version()

	// Broken in a way the API server accepts and the parser does not:
	// the last valid version stays in force.
	objs.update("obj-a", `{subject: {exe: /app/obj}, egress: [{to: [{cidr: 10.2.0.0/16}], ports: ["444-443"]}]}`)
	waitFor(t, "obj-a refused", func() bool { return o.Stats().Stale == 1 })
	wantLog := `callscope obj-a: spec.egress[0].ports[0]: \"444-443\" is an empty range`
	if log := p.log.String(); !strings.Contains(log, wantLog) || !strings.Contains(log, "its last valid version stays in force") {
		t.Errorf("log lacks %s:\n%s", wantLog, log)
	}
	if p.Current().Version() != valid || judge(p.Policies, "/app/obj", "10.2.0.1:443").Verdict != Allowed {
		t.Error("a refused object displaced its last valid version")
	}

	// Refused from the first: binds nothing; the others stay.
	objs.create("obj-b", `{subject: {exe: "/app/[b"}, egress: [{to: [{cidr: 10.3.0.0/16}], ports: ["90-80"]}]}`)
	waitFor(t, "obj-b refused", func() bool { return o.Stats().Invalid == 1 })
	for _, want := range []string{`callscope obj-b: spec.subject.exe: \"/app/[b\" is not a valid glob`, `callscope obj-b: spec.egress[0].ports[0]: \"90-80\" is an empty range`, "problems=2", "it binds nothing"} {
		if !strings.Contains(p.log.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if has(p.Policies, "obj-b") || !has(p.Policies, "obj-a") || !has(p.Policies, "files-a") {
		t.Errorf("after obj-b: %v", scopeNames(p.Policies))
	}

	// A name a file has: the file wins.
	objs.create("files-a", "{subject: {exe: /app/clash}, egress: [{to: [{cidr: 0.0.0.0/0}]}]}")
	waitFor(t, "the clash refused", func() bool { return o.Stats().Invalid == 2 })
	wantLog = `callscope files-a: metadata.name: \"files-a\" is taken by the CallScope at ` + filepath.Join(dir, "a.yaml")
	if !strings.Contains(p.log.String(), wantLog) {
		t.Errorf("log lacks %s:\n%s", wantLog, p.log.String())
	}
	if j := judge(p.Policies, "/app/clash", "10.0.0.1:80"); j.Verdict != Unscoped {
		t.Errorf("a call the clashing object would bind: %+v, want unscoped", j)
	}
	// Until the file lets go of the name.
	write(t, filepath.Join(dir, "a.yaml"), strings.Replace(fileDoc, "files-a", "files-b", 1))
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if j := judge(p.Policies, "/app/clash", "10.0.0.1:80"); j.Verdict != Allowed || j.Rule != "files-a/egress[0]" {
		t.Errorf("once the file renamed its policy: %+v, want allowed by the object files-a", j)
	}

	// Fixed, then deleted.
	objs.update("obj-b", "{subject: {exe: /app/b}, egress: [{to: [{cidr: 10.3.0.0/16}]}]}")
	waitFor(t, "obj-b in force", func() bool { return has(p.Policies, "obj-b") })
	objs.delete("obj-a")
	waitFor(t, "obj-a gone", func() bool { return !has(p.Policies, "obj-a") })
	if j := judge(p.Policies, "/app/obj", "10.2.0.1:443"); j.Verdict != Unscoped {
		t.Errorf("a call of the deleted obj-a's subject: %+v, want unscoped", j)
	}
	st := o.Stats()
	if st.Valid != 2 || st.Stale != 0 || st.Invalid != 0 || st.Rejected != 3 || !st.Synced {
		t.Errorf("stats at the end: %+v, want 2 valid and 3 rejected", st)
	}
}

// An object changed while the agent judges calls takes effect by the
// next batch: the time from the API server accepting it to the policies
// in force carrying it.
func TestObjectChangeLatency(t *testing.T) {
	cp := cluster(t)
	objs := objectsOf(t, cp.Config)
	p, o := watchObjects(t, cp.Config, "")
	if !o.WaitSynced(context.Background(), 10*time.Second) {
		t.Fatal("objects not read in 10s")
	}
	before := p.Current().Version()
	accepted := time.Now()
	objs.create("latency", "{subject: {exe: /app/latency}}")
	created := time.Now()
	for p.Current().Version() == before {
		if time.Since(created) > 10*time.Second {
			t.Fatal("not in force after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("create call %v; from its return to the policies in force %v", created.Sub(accepted), time.Since(created))
}

// The API server cannot be reached at start: the files are in force, the
// failure is logged once and counted, and the objects come in once it
// answers. Then it goes away: the objects read stay in force, and what
// changed meanwhile comes in when it is back.
func TestObjectsAPIServerUnreachable(t *testing.T) {
	cp := cluster(t)
	objs := objectsOf(t, cp.Config)
	objs.create("reach-a", "{subject: {exe: /app/reach}, egress: [{to: [{cidr: 10.4.0.0/16}]}]}")
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), policyDoc("reach-file"))

	fwd := cp.Forward(t, false)
	p, o := watchObjects(t, fwd.ConfigFor(cp, cp.AdminToken), dir)
	if o.WaitSynced(context.Background(), 2*time.Second) {
		t.Fatal("synced with the API server unreachable")
	}
	if got := scopeNames(p.Policies); !slices.Equal(got, []string{"reach-file"}) {
		t.Errorf("in force with the API server unreachable at start: %v", got)
	}
	st := o.Stats()
	if st.Synced || st.WatchFailures == 0 {
		t.Errorf("stats with the API server unreachable at start: %+v", st)
	}
	log := p.log.String()
	if n := strings.Count(log, "cannot read them from the API server"); n != 1 || !strings.Contains(log, "connection refused") {
		t.Errorf("want the failure logged once, with its cause (%d times):\n%s", n, log)
	}

	fwd.Up(t)
	// The informer retries with a backoff of up to 30 s.
	if !o.WaitSynced(context.Background(), time.Minute) {
		t.Fatal("not synced a minute after the API server came back")
	}
	if !has(p.Policies, "reach-a") || !o.Stats().Synced || !strings.Contains(p.log.String(), "the API server answers again") {
		t.Errorf("once the API server answers: %v, %+v\n%s", scopeNames(p.Policies), o.Stats(), p.log.String())
	}

	// Gone again, after the objects were read.
	fwd.Cut()
	failures := o.Stats().WatchFailures
	waitLong(t, "the watch to fail", func() bool { st := o.Stats(); return !st.Synced && st.WatchFailures > failures })
	if !strings.Contains(p.log.String(), "cannot reach the API server; the objects last read stay in force") {
		t.Errorf("log:\n%s", p.log.String())
	}
	objs.delete("reach-a")
	objs.create("reach-b", "{subject: {exe: /app/reach-b}}")
	time.Sleep(time.Second)
	if j := judge(p.Policies, "/app/reach", "10.4.0.1:80"); j.Verdict != Allowed {
		t.Errorf("with the API server gone: %+v, want reach-a still in force", j)
	}

	fwd.Up(t)
	waitLong(t, "the changes made meanwhile", func() bool { return has(p.Policies, "reach-b") && !has(p.Policies, "reach-a") })
	waitLong(t, "synced again", func() bool { return o.Stats().Synced })
}

// waitLong waits for what the informer does after a backoff of up to 30 s.
func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// parseObject reads what the API server stores, metadata and all, as the
// document a file would hold.
func TestParseObject(t *testing.T) {
	u := toUnstructured(t, objectDoc("po", `{subject: {podLabels: {tier: "1"}}, egress: [{to: [{dns: "*.Example.com."}], ports: [443, "8000-8100"]}]}`))
	u.SetUID("0b5d7c3e-1f2a-4b6c-8d9e-0f1a2b3c4d5e")
	u.SetResourceVersion("812")
	u.SetGeneration(3)
	u.SetLabels(map[string]string{"team": "payments"})
	u.SetAnnotations(map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"})
	u.SetCreationTimestamp(metav1.Now())
	policy, errs := parseObject(u)
	if errs != nil {
		t.Fatalf("refused: %v", &errs)
	}
	want, err := Parse("x.yaml", []byte(objectDoc("po", `{subject: {podLabels: {tier: "1"}}, egress: [{to: [{dns: "*.example.com"}], ports: [443, 8000-8100]}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	if Version([]Policy{policy}) != Version(want) || policy.Source.File != "callscope/po" {
		t.Errorf("parsed %+v, want %+v", policy, want[0])
	}

	// What the API server would prune or refuse, the parser refuses too.
	u.Object["status"] = map[string]any{"x": int64(1)}
	u.Object["spec"].(map[string]any)["egress"].([]any)[0].(map[string]any)["ports"] = []any{int64(70000)}
	_, errs = parseObject(u)
	got := objectProblems("po", errs)
	for _, want := range []string{`callscope po: unknown field "status"`, `callscope po: spec.egress[0].ports[0]: "70000" is not a port`} {
		if !strings.Contains(got, want) {
			t.Errorf("problems %q lack %q", got, want)
		}
	}
}
