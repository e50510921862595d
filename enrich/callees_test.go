package enrich

import (
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// calleeFeed hands objects to a CalleeIndex as its informers do: through
// the transform, into a store keyed by client-go's key function, then to
// the add, update or delete handler.
type calleeFeed struct {
	x      *CalleeIndex
	stores [numCalleeSources]cache.Store
}

func newCalleeFeed(td string) *calleeFeed {
	f := &calleeFeed{x: NewCalleeIndex(nil, td, slog.New(slog.DiscardHandler))}
	for i := range f.stores {
		f.stores[i] = cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc)
	}
	return f
}

func (f *calleeFeed) source(obj any) (int, cache.TransformFunc, cache.ResourceEventHandlerFuncs) {
	switch obj.(type) {
	case *corev1.Service:
		return calleeServices, slimService, cache.ResourceEventHandlerFuncs{AddFunc: f.x.addService, UpdateFunc: f.x.updateService, DeleteFunc: f.x.deleteService}
	case *discoveryv1.EndpointSlice:
		return calleeSlices, slimSlice, cache.ResourceEventHandlerFuncs{AddFunc: f.x.addSlice, UpdateFunc: f.x.updateSlice, DeleteFunc: f.x.deleteSlice}
	case *corev1.Pod:
		return calleePods, slimPod, cache.ResourceEventHandlerFuncs{AddFunc: f.x.addPod, UpdateFunc: f.x.updatePod, DeleteFunc: f.x.deletePod}
	}
	panic(fmt.Sprintf("no informer for %T", obj))
}

func (f *calleeFeed) apply(tb testing.TB, obj any) {
	tb.Helper()
	i, transform, h := f.source(obj)
	slim, err := transform(obj)
	if err != nil {
		tb.Fatal(err)
	}
	old, had, err := f.stores[i].Get(slim)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.stores[i].Update(slim); err != nil {
		tb.Fatal(err)
	}
	if had {
		h.OnUpdate(old, slim)
	} else {
		h.OnAdd(slim, false)
	}
}

func (f *calleeFeed) remove(tb testing.TB, obj any) {
	tb.Helper()
	i, transform, h := f.source(obj)
	slim, _ := transform(obj)
	old, had, err := f.stores[i].Get(slim)
	if err != nil || !had {
		tb.Fatalf("remove %T: not stored (%v)", obj, err)
	}
	if err := f.stores[i].Delete(old); err != nil {
		tb.Fatal(err)
	}
	h.OnDelete(old)
}

var calleeRV int

func nextRV() string { calleeRV++; return strconv.Itoa(calleeRV) }

func calleeTestPod(ns, name, sa string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: nextRV(),
			Labels: map[string]string{"pod-template-hash": "7d9f8c"}},
		Spec:   corev1.PodSpec{NodeName: "worker-2", ServiceAccountName: sa},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	p.OwnerReferences = []metav1.OwnerReference{controllerRef("apps/v1", "ReplicaSet", "web-7d9f8c")}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func calleeTestService(ns, name string, ips ...string) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: nextRV()},
		Spec:       corev1.ServiceSpec{ClusterIPs: ips},
	}
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	return s
}

// calleeTestSlice names one endpoint per pod=ip pair; a pair "=ip" has no
// targetRef.
func calleeTestSlice(ns, name, service string, family discoveryv1.AddressType, pairs ...[2]string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: nextRV(),
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: family,
	}
	for _, p := range pairs {
		ep := discoveryv1.Endpoint{Addresses: []string{p[1]}}
		if p[0] != "" {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p[0]}
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	return s
}

func lookupCallee(t *testing.T, x *CalleeIndex, addr string) *Callee {
	t.Helper()
	c, ok := x.Lookup(netip.MustParseAddr(addr))
	if ok != (c != nil) {
		t.Fatalf("Lookup(%s) = %v, %v", addr, c, ok)
	}
	return c
}

func wantCallee(t *testing.T, x *CalleeIndex, addr string, want *Callee) {
	t.Helper()
	got := lookupCallee(t, x, addr)
	switch {
	case want == nil && got != nil:
		t.Errorf("%s: got %+v, want not found", addr, *got)
	case want != nil && got == nil:
		t.Errorf("%s: not found, want %+v", addr, *want)
	case want != nil && *got != *want:
		t.Errorf("%s:\n got %+v\nwant %+v", addr, *got, *want)
	}
}

func TestCalleeIndex(t *testing.T) {
	f := newCalleeFeed("example.org")
	x := f.x
	const id = "spiffe://example.org/ns/shop/sa/web"
	webPod := &Callee{Namespace: "shop", Pod: "web-7d9f8c-a", ServiceAccount: "web", Workload: "Deployment/web", Identity: id}

	// A Service's cluster IPs, of both families, name the Service only.
	f.apply(t, calleeTestService("shop", "web", "10.96.0.10", "fd00:96::10"))
	wantCallee(t, x, "10.96.0.10", &Callee{Namespace: "shop", Service: "web"})
	wantCallee(t, x, "fd00:96::10", &Callee{Namespace: "shop", Service: "web"})
	wantCallee(t, x, "::ffff:10.96.0.10", &Callee{Namespace: "shop", Service: "web"})

	// An endpoint whose pod is not known yet: the Service and the pod's name.
	f.apply(t, calleeTestSlice("shop", "web-abc", "web", discoveryv1.AddressTypeIPv4,
		[2]string{"web-7d9f8c-a", "10.0.1.5"}, [2]string{"", "10.0.1.9"}))
	wantCallee(t, x, "10.0.1.5", &Callee{Namespace: "shop", Service: "web", Pod: "web-7d9f8c-a"})
	wantCallee(t, x, "10.0.1.9", &Callee{Namespace: "shop", Service: "web"})

	// The pod comes: both combine.
	pod := calleeTestPod("shop", "web-7d9f8c-a", "web", "10.0.1.5", "fd00::1:5")
	f.apply(t, pod)
	withSvc := *webPod
	withSvc.Service = "web"
	wantCallee(t, x, "10.0.1.5", &withSvc)
	// Its IPv6 address is in no slice.
	wantCallee(t, x, "fd00::1:5", webPod)

	// A status update changes nothing published.
	before := lookupCallee(t, x, "10.0.1.5")
	pod = pod.DeepCopy()
	pod.ResourceVersion = nextRV()
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	f.apply(t, pod)
	if got := lookupCallee(t, x, "10.0.1.5"); got == nil || *got != *before {
		t.Errorf("after a status update: %+v, want %+v", got, before)
	}

	// The slice drops the endpoint: the pod stays.
	f.apply(t, calleeTestSlice("shop", "web-abc", "web", discoveryv1.AddressTypeIPv4, [2]string{"", "10.0.1.9"}))
	wantCallee(t, x, "10.0.1.5", webPod)

	// A slice still naming a pod that has gone, whose address a new pod
	// has now, does not lend the new pod its Service.
	f.apply(t, calleeTestSlice("shop", "db-1", "db", discoveryv1.AddressTypeIPv4, [2]string{"db-0", "10.0.1.5"}))
	wantCallee(t, x, "10.0.1.5", webPod)
	f.remove(t, calleeTestSlice("shop", "db-1", "db", discoveryv1.AddressTypeIPv4))

	// Several Services: the first by name.
	f.apply(t, calleeTestSlice("shop", "web-headless-1", "web-headless", discoveryv1.AddressTypeIPv4, [2]string{"web-7d9f8c-a", "10.0.1.5"}))
	f.apply(t, calleeTestSlice("shop", "all-1", "all", discoveryv1.AddressTypeIPv4, [2]string{"web-7d9f8c-a", "10.0.1.5"}))
	all := *webPod
	all.Service = "all"
	wantCallee(t, x, "10.0.1.5", &all)
	f.remove(t, calleeTestSlice("shop", "all-1", "all", discoveryv1.AddressTypeIPv4))
	headless := *webPod
	headless.Service = "web-headless"
	wantCallee(t, x, "10.0.1.5", &headless)

	// The pod goes: what the slice says stays.
	f.remove(t, pod)
	wantCallee(t, x, "10.0.1.5", &Callee{Namespace: "shop", Service: "web-headless", Pod: "web-7d9f8c-a"})
	wantCallee(t, x, "fd00::1:5", nil)
	f.remove(t, calleeTestSlice("shop", "web-headless-1", "web-headless", discoveryv1.AddressTypeIPv4))
	wantCallee(t, x, "10.0.1.5", nil)

	// Host-network pods have their node's IP: never indexed.
	host := calleeTestPod("kube-system", "node-exporter-x", "node-exporter", "192.168.1.20")
	host.Spec.HostNetwork = true
	f.apply(t, host)
	wantCallee(t, x, "192.168.1.20", nil)
	// Nor are the endpoints of a Service of host-network pods, while such
	// a pod says the address is a node's.
	exporters := calleeTestSlice("kube-system", "node-exporter-1", "node-exporter", discoveryv1.AddressTypeIPv4,
		[2]string{"node-exporter-x", "192.168.1.20"})
	f.apply(t, exporters)
	wantCallee(t, x, "192.168.1.20", nil)
	f.remove(t, host)
	wantCallee(t, x, "192.168.1.20", &Callee{Namespace: "kube-system", Service: "node-exporter", Pod: "node-exporter-x"})
	f.apply(t, host)
	wantCallee(t, x, "192.168.1.20", nil)
	f.remove(t, exporters)
	f.remove(t, host)
	wantCallee(t, x, "192.168.1.20", nil)

	// A pod that has ended leaves its IP to the next.
	done := calleeTestPod("ci", "build-1", "builder", "10.0.2.7")
	f.apply(t, done)
	if lookupCallee(t, x, "10.0.2.7") == nil {
		t.Fatal("running pod not indexed")
	}
	done = done.DeepCopy()
	done.ResourceVersion = nextRV()
	done.Status.Phase = corev1.PodSucceeded
	f.apply(t, done)
	wantCallee(t, x, "10.0.2.7", nil)

	// A new pod that takes an address before the old one's delete came:
	// the old one's delete leaves the new one.
	a := calleeTestPod("ci", "a", "builder", "10.0.2.8")
	b := calleeTestPod("ci", "b", "builder", "10.0.2.8")
	f.apply(t, a)
	f.apply(t, b)
	f.remove(t, a)
	if c := lookupCallee(t, x, "10.0.2.8"); c == nil || c.Pod != "b" {
		t.Errorf("10.0.2.8 after a's delete: %+v, want pod b", c)
	}

	// Deleting a Service removes its cluster IPs.
	f.remove(t, calleeTestService("shop", "web", "10.96.0.10", "fd00:96::10"))
	wantCallee(t, x, "10.96.0.10", nil)
	wantCallee(t, x, "fd00:96::10", nil)
	// A headless Service has none.
	f.apply(t, calleeTestService("shop", "headless", "None"))
	wantCallee(t, x, "10.0.0.1", nil)

	// Tombstones of deletes the informer missed.
	c := calleeTestPod("ci", "c", "builder", "10.0.2.9")
	f.apply(t, c)
	slim, _ := slimPod(c)
	x.deletePod(cache.DeletedFinalStateUnknown{Key: "ci/c", Obj: slim})
	wantCallee(t, x, "10.0.2.9", nil)

	if n := x.Stats().Addresses; n != 2 { // 10.0.1.9, 10.0.2.8
		t.Errorf("Addresses = %d, want 2", n)
	}
}

// TestCalleeSlimObjects: the reduced objects key and version as the API
// objects do, which the informers' stores and their telling of updates
// from resyncs rely on.
func TestCalleeSlimObjects(t *testing.T) {
	pod := calleeTestPod("shop", "web-1", "web", "10.0.1.5")
	pod.ResourceVersion = "4711"
	slim, _ := slimPod(pod)
	key, err := cache.MetaNamespaceKeyFunc(slim)
	if err != nil || key != "shop/web-1" {
		t.Errorf("key %q, %v; want shop/web-1", key, err)
	}
	m := slim.(metav1.ObjectMetaAccessor).GetObjectMeta()
	if m.GetResourceVersion() != "4711" {
		t.Errorf("resource version %q, want 4711", m.GetResourceVersion())
	}
	// Versions that are not numbers stay apart.
	pod.ResourceVersion = "a"
	a, _ := slimPod(pod)
	pod.ResourceVersion = "b"
	b, _ := slimPod(pod)
	if a.(*calleePod).rv == b.(*calleePod).rv {
		t.Error("resource versions a and b compare equal")
	}
	// Already reduced objects pass through.
	if again, _ := slimPod(slim); again != slim {
		t.Error("slimPod changed a reduced pod")
	}
}

func TestCalleeWorkload(t *testing.T) {
	for _, c := range []struct {
		apiVersion, kind, name string
		hash                   string
		want                   string
	}{
		{"apps/v1", "ReplicaSet", "web-7d9f8c", "7d9f8c", "Deployment/web"},
		{"apps/v1", "ReplicaSet", "web-7d9f8c", "", "ReplicaSet/web-7d9f8c"},
		{"apps/v1", "ReplicaSet", "web", "7d9f8c", "ReplicaSet/web"},
		{"apps/v1", "StatefulSet", "db", "", "StatefulSet/db"},
		{"apps/v1", "DaemonSet", "agent", "", "DaemonSet/agent"},
		{"batch/v1", "Job", "nightly-29012345", "", "Job/nightly-29012345"},
		{"example.com/v1", "Rollout", "web", "", "Rollout/web"},
		{"", "", "", "", ""},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{}}}
		if c.kind != "" {
			pod.OwnerReferences = []metav1.OwnerReference{controllerRef(c.apiVersion, c.kind, c.name)}
		}
		if c.hash != "" {
			pod.Labels["pod-template-hash"] = c.hash
		}
		if got := calleeWorkload(pod); got != c.want {
			t.Errorf("%s %s (hash %q): %q, want %q", c.kind, c.name, c.hash, got, c.want)
		}
	}
}

func TestCalleeLookupAllocs(t *testing.T) {
	f := newCalleeFeed("")
	f.apply(t, calleeTestService("shop", "web", "10.96.0.10", "fd00:96::10"))
	f.apply(t, calleeTestPod("shop", "web-1", "web", "10.0.1.5", "fd00::1:5"))
	for _, s := range []string{"10.96.0.10", "fd00:96::10", "10.0.1.5", "fd00::1:5", "::ffff:10.0.1.5", "10.9.9.9", "fd00::9"} {
		a := netip.MustParseAddr(s)
		if n := testing.AllocsPerRun(1000, func() { f.x.Lookup(a) }); n != 0 {
			t.Errorf("Lookup(%s): %v allocations, want 0", s, n)
		}
	}
	var nilIndex *CalleeIndex
	if _, ok := nilIndex.Lookup(netip.MustParseAddr("10.0.1.5")); ok || nilIndex.Synced() {
		t.Error("a nil index found something")
	}
}

// BenchmarkCalleeIndex fills the index as its informers do, with 100,000
// pods behind 20,000 Services (five endpoints each), and reports the heap
// it takes per pod, counting the informers' stores of reduced objects,
// then times lookups.
func BenchmarkCalleeIndex(b *testing.B) {
	const (
		pods     = 100_000
		services = 20_000
		perSvc   = pods / services
		perNS    = 200 // Services per namespace
	)
	// The objects are made one at a time and dropped, as decoded ones
	// are: what the index keeps of them (names, say) counts.
	service := func(s int) (*corev1.Service, *discoveryv1.EndpointSlice, []*corev1.Pod) {
		ns := fmt.Sprintf("team-%03d", s/perNS)
		name := fmt.Sprintf("svc-%05d", s)
		svc := calleeTestService(ns, name, netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)}).String())
		var pairs [][2]string
		var ps []*corev1.Pod
		for i := range perSvc {
			n := s*perSvc + i
			ip := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}).String()
			p := calleeTestPod(ns, fmt.Sprintf("%s-7d9f8c6b5-%05d", name, n), name, ip)
			p.Labels = map[string]string{"app": name, "pod-template-hash": "7d9f8c6b5"}
			p.OwnerReferences = []metav1.OwnerReference{controllerRef("apps/v1", "ReplicaSet", name+"-7d9f8c6b5")}
			ps = append(ps, p)
			pairs = append(pairs, [2]string{fmt.Sprintf("%s-7d9f8c6b5-%05d", name, n), ip})
		}
		return svc, calleeTestSlice(ns, name+"-x1z2k", name, discoveryv1.AddressTypeIPv4, pairs...), ps
	}

	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	f := newCalleeFeed("cluster.local")
	// Slices first for half the Services, pods first for the others: the
	// informers run side by side.
	for s := range services {
		svc, slice, ps := service(s)
		f.apply(b, svc)
		if s%2 == 0 {
			f.apply(b, slice)
		}
		for _, p := range ps {
			f.apply(b, p)
		}
		if s%2 == 1 {
			f.apply(b, slice)
		}
	}
	after := heap()
	if n := f.x.Stats().Addresses; n != pods+services {
		b.Fatalf("%d addresses indexed, want %d", n, pods+services)
	}

	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		n := i * 97
		addrs[i] = netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := f.x.Lookup(addrs[i%len(addrs)]); !ok {
			b.Fatal("not found")
		}
		i++
	}
	// After the loop: b.Loop's start resets the metrics reported before.
	b.ReportMetric(float64(after-before)/pods, "heap-bytes/pod")
	runtime.KeepAlive(f)
}
