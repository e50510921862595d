package enrich

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

const indexNode = "worker-1"

type podOpt func(*corev1.Pod)

func onNode(n string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = n } }

func withLabels(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withSA(sa string) podOpt { return func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa } }

func ownedBy(apiVersion, kind, name string) podOpt {
	return func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{controllerRef(apiVersion, kind, name)}
	}
}

func controllerRef(apiVersion, kind, name string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: types.UID("uid-" + name), Controller: &yes}
}

func indexPod(ns, name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       corev1.PodSpec{NodeName: indexNode, ServiceAccountName: "sa-" + name},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// watchSignal makes the fake clientset's pod watch report when it is
// established. The fake does not replay what happened between the
// informer's list and its watch, so a test that creates pods after Start
// must wait for the watch first.
func watchSignal(c *fake.Clientset) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	c.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := c.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return false, nil, err
		}
		once.Do(func() { close(ch) })
		return true, w, nil
	})
	return ch
}

func startIndex(t *testing.T, c *fake.Clientset, log *slog.Logger) *PodIndex {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	watching := watchSignal(c)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := NewPodIndex(c, indexNode, log)
	if err := p.Start(ctx, 5*time.Second); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !p.Synced() {
		t.Fatal("Synced is false after Start returned nil")
	}
	select {
	case <-watching:
	case <-time.After(5 * time.Second):
		t.Fatal("pod watch not established")
	}
	return p
}

func waitIndex(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPodIndexAddUpdateDelete(t *testing.T) {
	pod := indexPod("payments", "billing-1", withLabels("app", "billing"), withSA("billing"))
	bare := indexPod("payments", "debug", withSA(""))
	c := fake.NewClientset(pod, bare)
	p := startIndex(t, c, nil)

	got, ok := p.Lookup(string(pod.UID))
	if !ok {
		t.Fatal("pod present at Start not indexed")
	}
	want := Pod{UID: string(pod.UID), Namespace: "payments", Name: "billing-1", ServiceAccount: "billing"}
	if got.UID != want.UID || got.Namespace != want.Namespace || got.Name != want.Name ||
		got.ServiceAccount != want.ServiceAccount || got.Workload != "" || got.Labels["app"] != "billing" {
		t.Errorf("got %+v, want %+v with app=billing", got, want)
	}
	if b, ok := p.Lookup(string(bare.UID)); !ok || b.ServiceAccount != "default" {
		t.Errorf("empty service account: got %+v %v, want \"default\"", b, ok)
	}
	if n := p.Len(); n != 2 {
		t.Errorf("Len = %d, want 2", n)
	}

	ctx := context.Background()
	upd := pod.DeepCopy()
	upd.Labels = map[string]string{"app": "billing", "version": "v2"}
	if _, err := c.CoreV1().Pods("payments").Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIndex(t, "label update", func() bool {
		got, ok := p.Lookup(string(pod.UID))
		return ok && got.Labels["version"] == "v2"
	})
	// The Pod published before the update is not changed by it.
	if _, ok := got.Labels["version"]; ok {
		t.Error("an update mutated a published Pod")
	}

	if err := c.CoreV1().Pods("payments").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIndex(t, "delete", func() bool {
		_, ok := p.Lookup(string(pod.UID))
		return !ok
	})
	if n := p.Len(); n != 1 {
		t.Errorf("Len = %d after delete, want 1", n)
	}
}

func TestPodIndexPodCreatedAfterStart(t *testing.T) {
	c := fake.NewClientset()
	p := startIndex(t, c, nil)
	if p.Len() != 0 {
		t.Fatalf("Len = %d, want 0", p.Len())
	}
	pod := indexPod("default", "late")
	if _, err := c.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIndex(t, "pod created after Start", func() bool {
		got, ok := p.Lookup(string(pod.UID))
		return ok && got.Name == "late"
	})
}

func TestPodIndexOtherNode(t *testing.T) {
	other := indexPod("default", "elsewhere", onNode("worker-2"))
	c := fake.NewClientset(other)
	p := startIndex(t, c, nil)

	// The fake clientset ignores field selectors, so this checks the
	// handlers' own filter; the selector itself is checked on the request.
	if _, ok := p.Lookup(string(other.UID)); ok {
		t.Error("pod of another node indexed at Start")
	}
	var selectors []string
	for _, a := range c.Actions() {
		if l, ok := a.(k8stesting.ListAction); ok && a.GetResource().Resource == "pods" {
			selectors = append(selectors, l.GetListRestrictions().Fields.String())
		}
	}
	if len(selectors) == 0 || selectors[0] != "spec.nodeName="+indexNode {
		t.Errorf("pod list field selectors %q, want spec.nodeName=%s", selectors, indexNode)
	}

	ctx := context.Background()
	later := indexPod("default", "elsewhere-later", onNode("worker-2"))
	mine := indexPod("default", "here")
	for _, pod := range []*corev1.Pod{later, mine} {
		if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Events arrive in order: once "here" is indexed, "elsewhere-later"
	// has been handled too.
	waitIndex(t, "pod of this node", func() bool { _, ok := p.Lookup(string(mine.UID)); return ok })
	if _, ok := p.Lookup(string(later.UID)); ok {
		t.Error("pod of another node indexed after Start")
	}
	if n := p.Len(); n != 1 {
		t.Errorf("Len = %d, want 1", n)
	}
}

func TestPodIndexTombstone(t *testing.T) {
	p := NewPodIndex(fake.NewClientset(), indexNode, slog.New(slog.DiscardHandler))
	pod := indexPod("default", "gone")
	p.upsert(context.Background(), pod)
	if _, ok := p.Lookup(string(pod.UID)); !ok {
		t.Fatal("pod not indexed")
	}
	p.remove(cache.DeletedFinalStateUnknown{Key: "default/gone", Obj: pod})
	if _, ok := p.Lookup(string(pod.UID)); ok {
		t.Error("pod still indexed after a tombstone")
	}
	// A pod that moved off the node (only a server ignoring the field
	// selector would show one) is evicted too.
	p.upsert(context.Background(), pod)
	moved := pod.DeepCopy()
	moved.Spec.NodeName = "worker-2"
	p.upsert(context.Background(), moved)
	if _, ok := p.Lookup(string(pod.UID)); ok {
		t.Error("pod of another node still indexed")
	}
}

func TestPodWorkload(t *testing.T) {
	rsWithDeployment := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
		Namespace: "payments", Name: "billing-7d9f", UID: "uid-billing-7d9f",
		OwnerReferences: []metav1.OwnerReference{controllerRef("apps/v1", "Deployment", "billing")},
	}}
	// A Deployment's ReplicaSet not named after it: only the GET can tell.
	rsRenamed := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
		Namespace: "payments", Name: "odd-name", UID: "uid-odd-name",
		OwnerReferences: []metav1.OwnerReference{controllerRef("apps/v1", "Deployment", "ledger")},
	}}
	rsBare := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "lonely-abc12", UID: "uid-lonely"}}
	jobOfCron := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{
		Namespace: "batch", Name: "report-29012345", UID: "uid-report-29012345",
		OwnerReferences: []metav1.OwnerReference{controllerRef("batch/v1", "CronJob", "report")},
	}}
	jobBare := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "batch", Name: "migrate", UID: "uid-migrate"}}

	cases := []struct {
		pod  *corev1.Pod
		want string
	}{
		{indexPod("payments", "billing-7d9f-x2", ownedBy("apps/v1", "ReplicaSet", "billing-7d9f"), withLabels("pod-template-hash", "7d9f")), "Deployment/billing"},
		{indexPod("payments", "billing-7d9f-y3", ownedBy("apps/v1", "ReplicaSet", "billing-7d9f"), withLabels("pod-template-hash", "7d9f")), "Deployment/billing"},
		{indexPod("payments", "odd-name-1", ownedBy("apps/v1", "ReplicaSet", "odd-name")), "Deployment/ledger"},
		{indexPod("payments", "api-5c6b7-q", ownedBy("apps/v1", "ReplicaSet", "api-5c6b7"), withLabels("pod-template-hash", "5c6b7")), "Deployment/api"},
		{indexPod("payments", "gone-rs-1", ownedBy("apps/v1", "ReplicaSet", "gone-rs")), "ReplicaSet/gone-rs"},
		{indexPod("payments", "lonely-abc12-z", ownedBy("apps/v1", "ReplicaSet", "lonely-abc12"), withLabels("pod-template-hash", "abc12")), "ReplicaSet/lonely-abc12"},
		{indexPod("data", "db-0", ownedBy("apps/v1", "StatefulSet", "db")), "StatefulSet/db"},
		{indexPod("kube-system", "agent-x7", ownedBy("apps/v1", "DaemonSet", "agent")), "DaemonSet/agent"},
		{indexPod("batch", "report-29012345-abcde", ownedBy("batch/v1", "Job", "report-29012345")), "CronJob/report"},
		{indexPod("batch", "migrate-k2", ownedBy("batch/v1", "Job", "migrate")), "Job/migrate"},
		{indexPod("batch", "gone-job-k2", ownedBy("batch/v1", "Job", "gone-job")), "Job/gone-job"},
		{indexPod("ci", "runner-1", ownedBy("example.com/v1", "Runner", "runner")), "Runner/runner"},
		{indexPod("default", "bare"), ""},
	}
	objs := []runtime.Object{rsWithDeployment, rsRenamed, rsBare, jobOfCron, jobBare}
	for _, tc := range cases {
		objs = append(objs, tc.pod)
	}
	c := fake.NewClientset(objs...)
	p := startIndex(t, c, nil)

	for _, tc := range cases {
		got, ok := p.Lookup(string(tc.pod.UID))
		if !ok {
			t.Errorf("%s/%s not indexed", tc.pod.Namespace, tc.pod.Name)
			continue
		}
		if got.Workload != tc.want {
			t.Errorf("%s/%s: workload %q, want %q", tc.pod.Namespace, tc.pod.Name, got.Workload, tc.want)
		}
	}

	// Two pods of billing-7d9f, one GET.
	if n := countGets(c, "replicasets", "billing-7d9f"); n != 1 {
		t.Errorf("%d GETs of ReplicaSet billing-7d9f, want 1 (cached)", n)
	}

	// The owner cache forgets a ReplicaSet once its last pod is gone.
	key := ownerKey{ownerReplicaSet, "payments", "billing-7d9f"}
	if !p.cachedOwner(key) {
		t.Fatal("ReplicaSet billing-7d9f not cached")
	}
	ctx := context.Background()
	for _, name := range []string{"billing-7d9f-x2", "billing-7d9f-y3"} {
		if err := c.CoreV1().Pods("payments").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitIndex(t, "owner cache eviction", func() bool { return !p.cachedOwner(key) })
}

func (p *PodIndex) cachedOwner(key ownerKey) bool {
	p.ownMu.Lock()
	defer p.ownMu.Unlock()
	_, ok := p.owners[key]
	return ok
}

func countGets(c *fake.Clientset, resource, name string) int {
	n := 0
	for _, a := range c.Actions() {
		if g, ok := a.(k8stesting.GetAction); ok && a.GetVerb() == "get" && a.GetResource().Resource == resource && g.GetName() == name {
			n++
		}
	}
	return n
}

// logRecorder keeps log records for tests to inspect.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

func (h *logRecorder) warnings(containing string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, containing) {
			n++
		}
	}
	return n
}

func TestPodWorkloadOwnerForbidden(t *testing.T) {
	var objs []runtime.Object
	for _, name := range []string{"a", "b", "c"} {
		objs = append(objs,
			indexPod("payments", "billing-7d9f-"+name, ownedBy("apps/v1", "ReplicaSet", "billing-7d9f"), withLabels("pod-template-hash", "7d9f")),
			indexPod("payments", "ledger-55aa-"+name, ownedBy("apps/v1", "ReplicaSet", "ledger-55aa"), withLabels("pod-template-hash", "55aa")),
			indexPod("batch", "report-2901-"+name, ownedBy("batch/v1", "Job", "report-2901-"+name)))
	}
	c := fake.NewClientset(objs...)
	for _, res := range []string{"replicasets", "jobs"} {
		c.PrependReactor("get", res, func(a k8stesting.Action) (bool, runtime.Object, error) {
			gr := schema.GroupResource{Group: a.GetResource().Group, Resource: a.GetResource().Resource}
			return true, nil, apierrors.NewForbidden(gr, a.(k8stesting.GetAction).GetName(), nil)
		})
	}
	h := &logRecorder{}
	p := startIndex(t, c, slog.New(h))

	for _, o := range objs {
		pod := o.(*corev1.Pod)
		got, _ := p.Lookup(string(pod.UID))
		want := "Job/" + pod.OwnerReferences[0].Name
		if strings.HasPrefix(pod.Name, "billing") {
			want = "Deployment/billing"
		} else if strings.HasPrefix(pod.Name, "ledger") {
			want = "Deployment/ledger"
		}
		if got == nil || got.Workload != want {
			t.Errorf("%s: got %+v, want workload %q", pod.Name, got, want)
		}
	}
	if n := h.warnings("get on replicasets in API group apps"); n != 1 {
		t.Errorf("%d warnings naming the replicasets permission, want 1", n)
	}
	if n := h.warnings("get on jobs in API group batch"); n != 1 {
		t.Errorf("%d warnings naming the jobs permission, want 1", n)
	}
	// A failed GET is not repeated for each pod of the same ReplicaSet.
	if n := countGets(c, "replicasets", "billing-7d9f"); n != 1 {
		t.Errorf("%d GETs of ReplicaSet billing-7d9f, want 1", n)
	}
}

func TestPodIndexStartForbidden(t *testing.T) {
	c := fake.NewClientset(indexPod("default", "x"))
	c.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "",
			errUserCannot("list", "pods"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := NewPodIndex(c, indexNode, slog.New(slog.DiscardHandler))
	const timeout = 500 * time.Millisecond
	start := time.Now()
	err := p.Start(ctx, timeout)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Start succeeded with pods forbidden")
	}
	msg := err.Error()
	for _, want := range []string{"forbidden", "list", "pods", indexNode} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("error %v does not wrap the Forbidden status", err)
	}
	if elapsed > timeout+2*time.Second {
		t.Errorf("Start returned after %s, sync timeout %s", elapsed, timeout)
	}
	if p.Synced() {
		t.Error("Synced is true")
	}
	if err := p.Start(ctx, timeout); err == nil {
		t.Error("second Start succeeded")
	}
}

type userCannot string

func (e userCannot) Error() string { return string(e) }

func errUserCannot(verb, resource string) error {
	return userCannot(`User "system:serviceaccount:callscope:agent" cannot ` + verb + ` resource "` + resource + `" in API group "" at the cluster scope`)
}

func TestPodIndexStartCanceled(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("etcd down")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := NewPodIndex(c, indexNode, slog.New(slog.DiscardHandler)).Start(ctx, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("Start = %v, want the context's error", err)
	}
}

func TestPodIndexNil(t *testing.T) {
	var p *PodIndex
	if _, ok := p.Lookup("x"); ok || p.Synced() || p.Len() != 0 {
		t.Error("nil PodIndex is not empty")
	}
}

func benchIndex(tb testing.TB) (*PodIndex, string) {
	p := NewPodIndex(fake.NewClientset(), indexNode, slog.New(slog.DiscardHandler))
	var uid string
	for i := range 110 {
		pod := indexPod("default", "pod-"+string(rune('a'+i%26))+string(rune('a'+i/26)), withLabels("app", "x"))
		p.upsert(context.Background(), pod)
		uid = string(pod.UID)
	}
	if p.Len() != 110 {
		tb.Fatalf("Len = %d", p.Len())
	}
	return p, uid
}

func TestPodLookupAllocs(t *testing.T) {
	p, uid := benchIndex(t)
	miss := "00000000-0000-0000-0000-000000000000"
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := p.Lookup(uid); !ok {
			t.Fatal("miss")
		}
		if _, ok := p.Lookup(miss); ok {
			t.Fatal("hit")
		}
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %.1f times per call", allocs)
	}
}

func BenchmarkPodLookup(b *testing.B) {
	p, uid := benchIndex(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := p.Lookup(uid); !ok {
			b.Fatal("miss")
		}
	}
}

func TestKubeClientOff(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	os.Unsetenv("KUBERNETES_SERVICE_HOST")
	c, ok, err := KubeClient("")
	if c != nil || ok || err != nil {
		t.Errorf("KubeClient(\"\") = %v, %v, %v; want nil, false, nil", c, ok, err)
	}
}

func TestKubeClientMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, ok, err := KubeClient(path)
	if err == nil || ok {
		t.Fatalf("KubeClient(missing) = ok %v, err %v; want an error", ok, err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestKubeClientKubeconfig(t *testing.T) {
	const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
users:
- name: test
  user:
    token: not-a-secret
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
`
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	c, ok, err := KubeClient(path)
	if err != nil || !ok || c == nil {
		t.Fatalf("KubeClient = %v, %v, %v; want a client", c, ok, err)
	}
}

func TestPodIndexNoNode(t *testing.T) {
	err := NewPodIndex(fake.NewClientset(), "", slog.New(slog.DiscardHandler)).Start(context.Background(), time.Second)
	if err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("Start with no node name = %v, want an error naming it", err)
	}
}
