package enrich

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/internal/kubetest"
)

// TestCalleeIndexAPIServer follows Services, EndpointSlices and pods of a
// real API server: objects there before Start (the informers' lists) and
// made after (their watches), status updates, and deletes.
func TestCalleeIndexAPIServer(t *testing.T) {
	cp := kubetest.Get(t)
	client := cp.Client(t)
	ctx := context.Background()
	const ns = "callees"
	mustCreate(t, func() error {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	for _, sa := range []string{"web", "agent"} {
		mustCreate(t, func() error {
			_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			return err
		})
	}

	// Before Start: a Service, and a pod of a Deployment with its IPs.
	mustCreate(t, func() error {
		_, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.10.10", ClusterIPs: []string{"10.96.10.10"},
				Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		return err
	})
	web := calleeTestPod(ns, "web-7d9f8c-a", "web")
	web.ResourceVersion = ""
	web.Spec.Containers = []corev1.Container{{Name: "web", Image: "web"}}
	createPod(t, client, web, corev1.PodRunning, "10.244.1.5", "fd00:244::5")

	x := NewCalleeIndex(client, "example.org", slog.New(slog.DiscardHandler))
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := x.Start(runCtx, 30*time.Second); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !x.Synced() {
		t.Fatal("Synced is false after Start returned nil")
	}
	webCallee := Callee{Namespace: ns, Pod: "web-7d9f8c-a", ServiceAccount: "web", Workload: "Deployment/web",
		Identity: "spiffe://example.org/ns/callees/sa/web"}
	waitCallee(t, x, "10.96.10.10", &Callee{Namespace: ns, Service: "web"})
	waitCallee(t, x, "10.244.1.5", &webCallee)
	waitCallee(t, x, "fd00:244::5", &webCallee)

	// After Start: the Service's EndpointSlice, naming the pod and one not
	// known.
	mustCreate(t, func() error {
		_, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx,
			calleeSliceObject(ns, "web-x1z2k", "web", [2]string{"web-7d9f8c-a", "10.244.1.5"}, [2]string{"web-7d9f8c-b", "10.244.1.6"}),
			metav1.CreateOptions{})
		return err
	})
	withService := webCallee
	withService.Service = "web"
	waitCallee(t, x, "10.244.1.5", &withService)
	waitCallee(t, x, "10.244.1.6", &Callee{Namespace: ns, Service: "web", Pod: "web-7d9f8c-b"})
	waitCallee(t, x, "fd00:244::5", &webCallee)

	// A host-network pod has its node's IP: never indexed, while a pod
	// made after it is.
	host := calleeTestPod(ns, "agent-x", "agent")
	host.ResourceVersion = ""
	host.OwnerReferences = []metav1.OwnerReference{controllerRef("apps/v1", "DaemonSet", "agent")}
	host.Spec.HostNetwork = true
	host.Spec.Containers = []corev1.Container{{Name: "agent", Image: "agent"}}
	createPod(t, client, host, corev1.PodRunning, "192.168.50.10")
	later := calleeTestPod(ns, "later", "agent")
	later.ResourceVersion = ""
	later.OwnerReferences = []metav1.OwnerReference{controllerRef("apps/v1", "DaemonSet", "agent")}
	later.Spec.Containers = []corev1.Container{{Name: "agent", Image: "agent"}}
	createPod(t, client, later, corev1.PodRunning, "10.244.2.9")
	waitCallee(t, x, "10.244.2.9", &Callee{Namespace: ns, Pod: "later", ServiceAccount: "agent", Workload: "DaemonSet/agent",
		Identity: "spiffe://example.org/ns/callees/sa/agent"})
	wantCallee(t, x, "192.168.50.10", nil)
	mustCreate(t, func() error {
		_, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx,
			calleeSliceObject(ns, "agent-x1z2k", "agent", [2]string{"agent-x", "192.168.50.10"}, [2]string{"later", "10.244.2.9"}),
			metav1.CreateOptions{})
		return err
	})
	laterWithService := Callee{Namespace: ns, Service: "agent", Pod: "later", ServiceAccount: "agent", Workload: "DaemonSet/agent",
		Identity: "spiffe://example.org/ns/callees/sa/agent"}
	waitCallee(t, x, "10.244.2.9", &laterWithService)
	wantCallee(t, x, "192.168.50.10", nil)

	// An address nothing names is not found, and counted.
	e := newTestEnricher(t)
	e.cfg.Callees = x
	var out Event
	e.Enrich(&collector.Event{Kind: collector.KindConnect, PID: 1, Dst: netip.MustParseAddrPort("10.244.9.9:80")}, &out)
	if out.Callee != nil {
		t.Errorf("unknown address named %+v", *out.Callee)
	}
	if st := e.Stats(); st.CalleeUnknown != 1 || st.CalleeUnsynced != 0 {
		t.Errorf("unknown %d, unsynced %d; want 1, 0", st.CalleeUnknown, st.CalleeUnsynced)
	}

	// A pod that ends leaves its address.
	later, err := client.CoreV1().Pods(ns).Get(ctx, "later", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	later.Status.Phase = corev1.PodSucceeded
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, later, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCallee(t, x, "10.244.2.9", &Callee{Namespace: ns, Service: "agent", Pod: "later"})

	// A deleted pod goes; its endpoint stays as long as its slice says so.
	zero := int64(0)
	if err := client.CoreV1().Pods(ns).Delete(ctx, "web-7d9f8c-a", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitCallee(t, x, "fd00:244::5", nil)
	waitCallee(t, x, "10.244.1.5", &Callee{Namespace: ns, Service: "web", Pod: "web-7d9f8c-a"})
	if err := client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-x1z2k", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCallee(t, x, "10.244.1.5", nil)
	waitCallee(t, x, "10.244.1.6", nil)
	if err := client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCallee(t, x, "10.96.10.10", nil)
	// The API server's Service range is IPv4 only (kubetest.ServiceCIDR):
	// IPv6 cluster IPs are covered by TestCalleeIndex.
	if st := x.Stats(); st.WatchErrors != 0 {
		t.Errorf("%d watch errors", st.WatchErrors)
	}
}

// TestCalleeIndexStartForbidden: a service account without the rights
// gets an error that says which.
func TestCalleeIndexStartForbidden(t *testing.T) {
	cp := kubetest.Get(t)
	client := cp.Client(t)
	ctx := context.Background()
	const ns = "callees-forbidden"
	mustCreate(t, func() error {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{})
		return err
	})
	restricted := kubernetes.NewForConfigOrDie(cp.ConfigFor(cp.Token(t, ns, "nobody")))
	x := NewCalleeIndex(restricted, "", slog.New(slog.DiscardHandler))
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := x.Start(runCtx, 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "list and watch on services") {
		t.Fatalf("Start: %v, want forbidden naming services", err)
	}
	if x.Synced() || x.Stats().WatchErrors == 0 {
		t.Errorf("synced %v, watch errors %d", x.Synced(), x.Stats().WatchErrors)
	}
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}

// createPod creates pod and sets its phase and IPs through the status
// subresource, as a kubelet does.
func createPod(t *testing.T, client kubernetes.Interface, pod *corev1.Pod, phase corev1.PodPhase, ips ...string) {
	t.Helper()
	ctx := context.Background()
	pod = pod.DeepCopy()
	pod.Status = corev1.PodStatus{}
	created, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = phase
	created.Status.PodIP = ips[0]
	for _, ip := range ips {
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if _, err := client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func calleeSliceObject(ns, name, service string, pairs ...[2]string) *discoveryv1.EndpointSlice {
	s := calleeTestSlice(ns, name, service, discoveryv1.AddressTypeIPv4, pairs...)
	s.ResourceVersion = ""
	return s
}

// waitCallee waits for Lookup(addr) to answer want (nil: not found).
func waitCallee(t *testing.T, x *CalleeIndex, addr string, want *Callee) {
	t.Helper()
	a := netip.MustParseAddr(addr)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, ok := x.Lookup(a)
		if (want == nil && !ok) || (want != nil && ok && *got == *want) {
			return
		}
		if time.Now().After(deadline) {
			wantCallee(t, x, addr, want)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
