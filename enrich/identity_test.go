package enrich

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/internal/kerneltest"
)

const testNode = indexNode

func testPod(uid, ns, name, sa string) *corev1.Pod {
	ctrl := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			UID: types.UID(uid), Namespace: ns, Name: name,
			Labels: map[string]string{"app": name, "pod-template-hash": "7d9f"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name + "-7d9f", UID: "rs-uid", Controller: &ctrl,
			}},
		},
		Spec: corev1.PodSpec{NodeName: testNode, ServiceAccountName: sa},
	}
}

// TestEnrichPods follows pods through a fake API server: a pod that comes
// after its first event still names it, an update is seen, a pod that
// never comes lets its events go on after the wait, counted.
func TestEnrichPods(t *testing.T) {
	kerneltest.Require(t)
	root, err := collector.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	client := fake.NewClientset()
	pods := startIndex(t, client, nil) // returns once the watch is open
	e, err := New(Config{CgroupRoot: root, Pods: pods, TrustDomain: "example.org", PodWait: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	const (
		uid   = "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"
		other = "2c7b2d5f-3a4e-4f6b-9c8d-0e1f2a3b4c5d"
		cid   = "3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"
	)
	podCgroup := func(uid string) *kerneltest.Cgroup {
		return kerneltest.NewCgroup(t, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+
			underscores(uid)+".slice/cri-containerd-"+cid+".scope")
	}
	event := func(cg *kerneltest.Cgroup) []collector.Event {
		return []collector.Event{{Kind: collector.KindConnect, PID: uint32(os.Getpid()),
			ProcStart: startTicks(t, os.Getpid()) * (1e9 / userHZ), CgroupID: cg.ID}}
	}
	cg := podCgroup(uid)

	// The first event comes before the API server has told of the pod.
	now := time.Now()
	out := e.EnrichBatch(event(cg), nil, now)
	if len(out) != 0 || e.Waiting() != 1 {
		t.Fatalf("event of an unknown pod went on (%d out, %d waiting)", len(out), e.Waiting())
	}
	if _, err := client.CoreV1().Pods("payments").Create(ctx, testPod(uid, "payments", "billing", "billing"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(out) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		out = e.Release(out[:0], now, false) // "now" stays put: the pod, not the wait, releases it
	}
	if len(out) != 1 || out[0].Pod == nil {
		t.Fatalf("the pod's arrival did not release its event: %+v", out)
	}
	ev := out[0]
	if ev.Pod.Namespace != "payments" || ev.Pod.Name != "billing" || ev.Pod.ServiceAccount != "billing" ||
		ev.Pod.Workload != "Deployment/billing" || ev.Cgroup.PodUID != uid || ev.Cgroup.ContainerID != cid {
		t.Errorf("pod facts %+v, cgroup %+v", ev.Pod, ev.Cgroup)
	}
	if want := "spiffe://example.org/ns/payments/sa/billing"; ev.Identity != want {
		t.Errorf("identity %q, want %q", ev.Identity, want)
	}

	// Known now: no wait, and no allocation on the hot path.
	in := event(cg)
	out = e.EnrichBatch(in, out, time.Now())
	if len(out) != 1 || out[0].Identity != ev.Identity {
		t.Fatalf("known pod: %+v", out)
	}
	if n := testing.AllocsPerRun(100, func() { out = e.EnrichBatch(in, out, time.Now()) }); n != 0 {
		t.Errorf("%v allocations per event of a known pod", n)
	}

	// An update (labels) is followed.
	p := testPod(uid, "payments", "billing", "billing")
	p.Labels["tier"] = "gold"
	if _, err := client.CoreV1().Pods("payments").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIndex(t, "the pod index", func() bool { pod, _ := pods.Lookup(uid); return pod != nil && pod.Labels["tier"] == "gold" })

	// A pod that never comes: its event goes on after PodWait, without pod
	// facts but with the pod UID from its cgroup, and is counted.
	out = e.EnrichBatch(event(podCgroup(other)), out, now)
	if len(out) != 0 {
		t.Fatal("event of an unknown pod went on at once")
	}
	out = e.Release(out[:0], now.Add(time.Second), false)
	if len(out) != 1 || out[0].Pod != nil || out[0].Cgroup.PodUID != other || out[0].Identity == "" {
		t.Fatalf("after the wait: %+v", out)
	}
	if st := e.Stats(); st.PodWaits != 2 || st.PodUnknown != 1 {
		t.Errorf("stats %+v, want 2 waits and 1 unknown", st)
	}

	// A deleted pod is forgotten.
	if err := client.CoreV1().Pods("payments").Delete(ctx, "billing", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIndex(t, "the pod index", func() bool { _, ok := pods.Lookup(uid); return !ok })

	// At shutdown, everything held goes on.
	e.EnrichBatch(event(cg), out, now)
	if out = e.Release(out[:0], now, true); len(out) != 1 || e.Waiting() != 0 {
		t.Errorf("shutdown release: %d out, %d waiting", len(out), e.Waiting())
	}
}

// TestEnrichHoldsBounded: past MaxWaiting the oldest held event goes on.
func TestEnrichHoldsBounded(t *testing.T) {
	kerneltest.Require(t)
	root, _ := collector.Cgroup2Mount()
	pods := startIndex(t, fake.NewClientset(), nil)
	e, err := New(Config{CgroupRoot: root, Pods: pods, MaxWaiting: 3, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cg := kerneltest.NewCgroup(t, "kubepods/besteffort/pod1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c")
	in := make([]collector.Event, 5)
	for i := range in {
		in[i] = collector.Event{Kind: collector.KindConnect, Cookie: uint64(i + 1), CgroupID: cg.ID}
	}
	out := e.EnrichBatch(in, nil, time.Now())
	if len(out) != 2 || e.Waiting() != 3 {
		t.Fatalf("got %d out, %d waiting; want the 2 oldest out, 3 waiting", len(out), e.Waiting())
	}
	if out[0].Cookie != 1 || out[1].Cookie != 2 || out[0].Pod != nil || out[0].Cgroup.PodUID == "" {
		t.Errorf("released %+v", out)
	}
}

func underscores(uid string) string {
	b := []byte(uid)
	for i := range b {
		if b[i] == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}

// BenchmarkEnrichPodHit is the per-event cost for a caller in a known pod
// once every cache is warm: process, cgroup, pod and SPIFFE ID lookups.
func BenchmarkEnrichPodHit(b *testing.B) {
	kerneltest.Require(b)
	root, err := collector.Cgroup2Mount()
	if err != nil {
		b.Fatal(err)
	}
	const uid = "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pods := NewPodIndex(fake.NewClientset(testPod(uid, "payments", "billing", "billing")), testNode, slog.New(slog.DiscardHandler))
	if err := pods.Start(ctx, 5*time.Second); err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{CgroupRoot: root, Pods: pods, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	cg := kerneltest.NewCgroup(b, "kubepods/burstable/pod"+uid+"/3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f")
	b2, _ := os.ReadFile("/proc/self/stat")
	_, start, _ := parseStat(b2)
	in := make([]collector.Event, 256)
	for i := range in {
		in[i] = collector.Event{Kind: collector.KindConnect, PID: uint32(os.Getpid()), ProcStart: start * (1e9 / userHZ), CgroupID: cg.ID}
	}
	now := time.Now()
	out := e.EnrichBatch(in, nil, now)
	if len(out) != len(in) || out[0].Pod == nil {
		b.Fatalf("pod not resolved: %d out", len(out))
	}
	b.ReportAllocs()
	for b.Loop() {
		out = e.EnrichBatch(in, out, now)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(in)), "ns/event")
}

// TestEnrichTLSWaitsBehindConnect: while a connect waits for its pod, a
// later event of the same connection waits too, even one that could go on
// at once, and both come out in the order they came.
func TestEnrichTLSWaitsBehindConnect(t *testing.T) {
	kerneltest.Require(t)
	root, err := collector.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	pods := startIndex(t, fake.NewClientset(), nil)
	e, err := New(Config{CgroupRoot: root, Pods: pods, PodWait: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cg := kerneltest.NewCgroup(t, "kubepods.slice/kubepods-pod"+underscores("4d8c3e6a-4b5f-4a7c-8d9e-1f2a3b4c5d6e")+".slice")
	now := time.Now()
	connect := collector.Event{Kind: collector.KindConnect, Cookie: 7, CgroupID: cg.ID}
	hello := collector.Event{Kind: collector.KindTLS, Cookie: 7} // no cgroup: nothing of its own to wait for
	other := collector.Event{Kind: collector.KindTLS, Cookie: 8}

	out := e.EnrichBatch([]collector.Event{connect, hello, other}, nil, now)
	if len(out) != 1 || out[0].Cookie != 8 {
		t.Fatalf("out %+v: want only the other connection's event", out)
	}
	out = e.Release(out[:0], now, true)
	if len(out) != 2 || out[0].Kind != collector.KindConnect || out[1].Kind != collector.KindTLS {
		t.Fatalf("released %+v: want the connect, then its tls event", out)
	}
	if out = e.EnrichBatch([]collector.Event{hello}, out[:0], now); len(out) != 1 {
		t.Errorf("with nothing held, the tls event waited")
	}
}

// TestEnrichCallee: connect and tls events name their destination, and
// lookups are counted by result.
func TestEnrichCallee(t *testing.T) {
	e := newTestEnricher(t)
	f := newCalleeFeed("")
	e.cfg.Callees = f.x
	f.apply(t, calleeTestService("shop", "web", "10.96.0.10"))

	var out Event
	connect := &collector.Event{Kind: collector.KindConnect, PID: 1, Dst: netip.MustParseAddrPort("10.96.0.10:443")}
	e.Enrich(connect, &out)
	if out.Callee == nil || out.Callee.Service != "web" {
		t.Errorf("connect: callee %+v", out.Callee)
	}
	tls := &collector.Event{Kind: collector.KindTLS, PID: 1, Dst: netip.MustParseAddrPort("[::ffff:10.96.0.10]:443")}
	e.Enrich(tls, &out)
	if out.Callee == nil || out.Callee.Service != "web" {
		t.Errorf("tls: callee %+v", out.Callee)
	}
	// Not synced yet (no informer ran): an address not found counts apart.
	outside := &collector.Event{Kind: collector.KindConnect, PID: 1, Dst: netip.MustParseAddrPort("203.0.113.1:443")}
	e.Enrich(outside, &out)
	f.x.synced.Store(true)
	e.Enrich(outside, &out)
	if out.Callee != nil {
		t.Errorf("unknown address: callee %+v", out.Callee)
	}
	st := e.Stats()
	if st.CalleeFound != 2 || st.CalleeUnsynced != 1 || st.CalleeUnknown != 1 || st.Callees.Addresses != 1 || !st.Callees.Synced {
		t.Errorf("stats: found %d, unsynced %d, unknown %d, %+v", st.CalleeFound, st.CalleeUnsynced, st.CalleeUnknown, st.Callees)
	}
}
