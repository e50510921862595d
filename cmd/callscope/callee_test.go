package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/internal/kerneltest"
)

// calleeEvent is what the callee test reads of an event.
type calleeEvent struct {
	Kind string `json:"kind"`
	Dst  struct {
		IP  string `json:"ip"`
		K8s *struct {
			Namespace      string `json:"namespace"`
			Service        string `json:"service"`
			Pod            string `json:"pod"`
			ServiceAccount string `json:"service_account"`
		} `json:"k8s"`
		Identity string `json:"identity"`
	} `json:"dst"`
	K8s struct {
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
	} `json:"k8s"`
	Identity string `json:"identity"`
	Scope    *struct {
		Verdict string `json:"verdict"`
		Rule    string `json:"rule"`
		Reason  string `json:"reason"`
	} `json:"scope"`
	Findings []struct {
		ID string `json:"id"`
	} `json:"findings"`
}

func namespaceObj(name, env string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"environment": env}}}
}

// runningPod creates pod as a kubelet would leave it: scheduled, running,
// with its IP.
func runningPod(t *testing.T, client kubernetes.Interface, pod *corev1.Pod, ip string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	created, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	if ip != "" {
		created.Status.PodIP = ip
		created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	if created, err = client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return created
}

// TestAgentNamesCallees runs the agent with the DaemonSet's service account
// against a real API server. A pod of a prod namespace, in a real pod
// cgroup, calls a pod of a dev namespace behind a Service, at an address
// in a network namespace: the event names both ends, a policy by Service
// allows the call, one by namespace does too, a call to an address the
// cluster does not know is not allowed by either and says why, and the
// call carries cross_environment.
func TestAgentNamesCallees(t *testing.T) {
	kerneltest.Require(t)
	cp := deployed(t)
	client := cp.Client(t)
	ctx := context.Background()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000)
	prod, dev := "cs-prod-"+suffix, "cs-dev-"+suffix
	for _, ns := range []*corev1.Namespace{namespaceObj(prod, "prod"), namespaceObj(dev, "dev")} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	}
	for ns, sa := range map[string]string{prod: "billing", dev: "ledger"} {
		if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	peer := kerneltest.NewPeer(t)
	unknown := kerneltest.NewPeer(t)

	caller := runningPod(t, client, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: prod, Name: "billing-0"},
		Spec:       corev1.PodSpec{NodeName: "test-node", ServiceAccountName: "billing", Containers: []corev1.Container{{Name: "app", Image: "billing"}}},
	}, "10.244.9.9")
	callee := runningPod(t, client, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: dev, Name: "ledger-0"},
		Spec:       corev1.PodSpec{NodeName: "other-node", ServiceAccountName: "ledger", Containers: []corev1.Container{{Name: "app", Image: "ledger"}}},
	}, peer.Addr.String())
	port := int32(8080)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: dev, Name: "ledger-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: "ledger"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{peer.Addr.String()},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: dev, Name: callee.Name, UID: callee.UID}}},
		Ports: []discoveryv1.EndpointPort{{Port: &port}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices(dev).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	policy := fmt.Sprintf(`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: billing-to-ledger}
spec:
  subject: {namespace: %s, serviceAccount: billing}
  egress:
    - to: [{service: %s/ledger}]
      ports: [%d]
    - to: [{namespace: %s}]
      ports: [%d]
`, prod, dev, 8080, dev, 8081)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	fwd := cp.Forward(t, true)
	a := startAgentWithin(t, time.Minute, "--kubeconfig", agentKubeconfig(t, cp, fwd), "--metrics-auth", "none", "--policy", dir)

	uid := strings.ReplaceAll(string(caller.UID), "-", "_")
	cg := kerneltest.NewCgroup(t, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+uid+".slice/cri-containerd-"+strings.Repeat("cd", 32)+".scope")

	read := func(t *testing.T, dst netip.AddrPort) calleeEvent {
		t.Helper()
		// The index may still be taking in the objects just made: call
		// until the callee is named, or the time is up.
		deadline := time.Now().Add(10 * time.Second)
		for {
			pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg}.Run(t)
			a.await(t, pid, 1)
			var e calleeEvent
			for _, line := range a.lines(pid) {
				if err := json.Unmarshal(line, &e); err != nil {
					t.Fatal(err)
				}
				if e.Kind == "connect" {
					break
				}
			}
			if e.Dst.K8s != nil && e.K8s.Pod != "" || dst.Addr() == unknown.Addr && e.K8s.Pod != "" || time.Now().After(deadline) {
				return e
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Nothing listens in the peer: each connect is refused at once.
	e := read(t, netip.AddrPortFrom(peer.Addr, 8080))
	if e.K8s.Namespace != prod || e.K8s.Pod != "billing-0" {
		t.Fatalf("caller %+v, want %s/billing-0", e.K8s, prod)
	}
	if k := e.Dst.K8s; k == nil || k.Namespace != dev || k.Service != "ledger" || k.Pod != "ledger-0" || k.ServiceAccount != "ledger" {
		t.Errorf("dst.k8s %+v, want %s/ledger, pod ledger-0, service account ledger", e.Dst.K8s, dev)
	}
	if want := "spiffe://cluster.local/ns/" + dev + "/sa/ledger"; e.Dst.Identity != want {
		t.Errorf("dst.identity %q, want %q", e.Dst.Identity, want)
	}
	if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "billing-to-ledger/egress[0]" {
		t.Errorf("scope %+v, want allowed by the service rule", e.Scope)
	}
	var ids []string
	for _, f := range e.Findings {
		ids = append(ids, f.ID)
	}
	if !slices.Contains(ids, "cross_environment") {
		t.Errorf("findings %v, want cross_environment (prod calling dev)", ids)
	}

	e = read(t, netip.AddrPortFrom(peer.Addr, 8081))
	if e.Scope == nil || e.Scope.Verdict != "allowed" || e.Scope.Rule != "billing-to-ledger/egress[1]" {
		t.Errorf("by namespace: scope %+v, want allowed by egress[1]", e.Scope)
	}

	e = read(t, netip.AddrPortFrom(unknown.Addr, 8080))
	if e.Dst.K8s != nil || e.Dst.Identity != "" {
		t.Errorf("an address the cluster does not know is named: %+v", e.Dst)
	}
	if e.Scope == nil || e.Scope.Verdict != "violation" || !strings.Contains(e.Scope.Reason, "the callee is not known") {
		t.Errorf("to an unknown callee: scope %+v, want a violation whose reason says the callee is unknown", e.Scope)
	}
	if got := a.metric(t, `callscope_callee_lookups_total{result="found"}`); got == "" || got == "0" {
		t.Errorf("callscope_callee_lookups_total{result=\"found\"} %q", got)
	}
}
