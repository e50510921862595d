package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/callscope/callscope/internal/kubetest"
	"github.com/callscope/callscope/scope"
)

var deployOnce sync.Once

// deployed is the shared control plane with deploy/kubernetes applied, as
// `kubectl apply -k deploy/kubernetes` would: the CRD, and the RBAC the
// agent's token gets.
func deployed(t *testing.T) *kubetest.ControlPlane {
	t.Helper()
	cp := kubetest.Get(t)
	deployOnce.Do(func() {
		dir := filepath.Join("..", "..", "deploy", "kubernetes")
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			Resources []string `json:"resources"`
		}
		if err := utilyaml.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		var files []string
		for _, r := range k.Resources {
			files = append(files, filepath.Join(dir, r))
		}
		cp.Apply(t, files...)
	})
	return cp
}

// agentKubeconfig is a kubeconfig for the DaemonSet's service account,
// through fwd.
func agentKubeconfig(t *testing.T, cp *kubetest.ControlPlane, fwd *kubetest.Forwarder) string {
	t.Helper()
	return fwd.Kubeconfig(t, cp, cp.Token(t, "callscope", "callscope"))
}

type callScopes struct {
	t   *testing.T
	res dynamic.ResourceInterface
}

func adminScopes(t *testing.T, cp *kubetest.ControlPlane) callScopes {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	return callScopes{t, dyn.Resource(scope.Resource)}
}

func callScopeDoc(name, spec string) string {
	return "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata:\n  name: " + name + "\nspec: " + spec + "\n"
}

func (c callScopes) object(doc string) *unstructured.Unstructured {
	c.t.Helper()
	j, err := utilyaml.ToJSON([]byte(doc))
	if err != nil {
		c.t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		c.t.Fatal(err)
	}
	return u
}

// create returns once the API server has accepted the object.
func (c callScopes) create(name, spec string) {
	c.t.Helper()
	if _, err := c.res.Create(context.Background(), c.object(callScopeDoc(name, spec)), metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create %s: %v", name, err)
	}
	c.t.Cleanup(func() { c.res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func (c callScopes) update(name, spec string) {
	c.t.Helper()
	cur, err := c.res.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	u := c.object(callScopeDoc(name, spec))
	u.SetResourceVersion(cur.GetResourceVersion())
	if _, err := c.res.Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("update %s: %v", name, err)
	}
}

func (c callScopes) delete(name string) {
	c.t.Helper()
	if err := c.res.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete %s: %v", name, err)
	}
}

// versionOf is the policy version of the documents, as the agent computes it.
func versionOf(t *testing.T, docs ...string) string {
	t.Helper()
	ps, err := scope.Parse("v.yaml", []byte(strings.Join(docs, "---\n")))
	if err != nil {
		t.Fatal(err)
	}
	return scope.Version(ps)
}

// caller connects to dst from a shell in cg every 10 ms, until the test
// ends: a workload whose calls the agent keeps judging.
func caller(t *testing.T, cg *kerneltest.Cgroup, dst netip.AddrPort) {
	t.Helper()
	script := fmt.Sprintf("while :; do exec 3<>/dev/tcp/%s/%d && exec 3>&-; sleep 0.01; done", dst.Addr(), dst.Port())
	cmd := exec.Command("bash", "-c", script)
	kerneltest.InCgroup(cmd, cg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// verdict is a judged event of the agent's stream, and when it was read.
type verdict struct {
	Kind   string `json:"kind"`
	Cgroup struct {
		Path string `json:"path"`
	} `json:"cgroup"`
	Scope struct {
		Verdict       string `json:"verdict"`
		Policy        string `json:"policy"`
		Rule          string `json:"rule"`
		PolicyVersion string `json:"policy_version"`
	} `json:"scope"`
	read time.Time
}

// verdicts are the connects from cg written from the index from on.
func (a *agent) verdicts(t *testing.T, cg *kerneltest.Cgroup, from int) []verdict {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []verdict
	for i := from; i < len(a.raw); i++ {
		var v verdict
		if err := json.Unmarshal(a.raw[i], &v); err != nil {
			t.Fatal(err)
		}
		if v.Kind == "connect" && v.Cgroup.Path == cg.Rel {
			v.read = a.read[i]
			out = append(out, v)
		}
	}
	return out
}

func (a *agent) written() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.raw)
}

// awaitVersion waits for the first connect from cg after the index from
// judged under version, checks that every one after it is too (a swap
// is never undone by an older set), and returns it.
func (a *agent) awaitVersion(t *testing.T, cg *kerneltest.Cgroup, from int, version string, timeout time.Duration) verdict {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		vs := a.verdicts(t, cg, from)
		for i, v := range vs {
			if v.Scope.PolicyVersion != version {
				continue
			}
			for _, later := range vs[i:] {
				if later.Scope.PolicyVersion != version {
					t.Fatalf("a verdict under %s after the first under %s", later.Scope.PolicyVersion, version)
				}
			}
			return v
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, v := range vs {
				seen = append(seen, v.Scope.PolicyVersion)
			}
			t.Fatalf("no verdict under policy version %s in %v; versions seen: %v", version, timeout, seen)
		}
		time.Sleep(time.Millisecond)
	}
}

// metric is the value of a series on the agent's /metrics, "" if absent.
func (a *agent) metric(t *testing.T, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const fileScope = `apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata:
  name: e2e-file
spec:
  subject: {cgroup: "/callscope-test-*/filed"}
  egress: [{to: [{cidr: 127.0.0.1/32}]}]
`

// TestAgentJudgesWithCallScopeObjects runs the agent with the DaemonSet's
// service account against a real API server, and a shell in a cgroup
// calling all along: a CallScope object created, changed, broken (valid
// for the API server, not for the agent), cut off with the API server,
// and deleted, each seen in the verdicts on real connects.
func TestAgentJudgesWithCallScopeObjects(t *testing.T) {
	kerneltest.Require(t)
	cp := deployed(t)
	scopes := adminScopes(t, cp)
	open := listenAny(t, "127.0.0.1:0")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file.yaml"), []byte(fileScope), 0o644); err != nil {
		t.Fatal(err)
	}
	fwd := cp.Forward(t, true)
	a := startAgent(t, "--kubeconfig", agentKubeconfig(t, cp, fwd), "--policy", dir, "--metrics-auth", "none")
	cg := kerneltest.NewCgroup(t, "crd")
	caller(t, cg, open)

	filesOnly := versionOf(t, fileScope)
	if v := a.awaitVersion(t, cg, 0, filesOnly, 5*time.Second); v.Scope.Verdict != "unscoped" {
		t.Errorf("before any object: %+v, want unscoped", v.Scope)
	}

	// Created: the first verdict under it, timed from the create call's
	// return.
	spec := fmt.Sprintf(`{subject: {cgroup: "/callscope-test-*/crd"}, egress: [{to: [{cidr: 127.0.0.1/32}], ports: [%d]}]}`, open.Port())
	from := a.written()
	scopes.create("crd-e2e", spec)
	accepted := time.Now()
	created := versionOf(t, fileScope, callScopeDoc("crd-e2e", spec))
	v := a.awaitVersion(t, cg, from, created, 5*time.Second)
	t.Logf("from the API server accepting the object to its first verdict: %v", v.read.Sub(accepted))
	if v.Scope.Verdict != "allowed" || v.Scope.Rule != "crd-e2e/egress[0]" {
		t.Errorf("under the new object: %+v, want allowed by crd-e2e/egress[0]", v.Scope)
	}
	if !strings.Contains(a.log.String(), "policy_version="+created) {
		t.Error("the agent did not log the new policy version")
	}

	// Changed.
	spec = `{subject: {cgroup: "/callscope-test-*/crd"}, egress: [{to: [{cidr: 127.0.0.1/32}], ports: [1]}]}`
	from = a.written()
	scopes.update("crd-e2e", spec)
	accepted = time.Now()
	changed := versionOf(t, fileScope, callScopeDoc("crd-e2e", spec))
	v = a.awaitVersion(t, cg, from, changed, 5*time.Second)
	t.Logf("from the API server accepting the change to its first verdict: %v", v.read.Sub(accepted))
	if v.Scope.Verdict != "violation" || v.Scope.Policy != "crd-e2e" {
		t.Errorf("under the changed object: %+v, want a violation of crd-e2e", v.Scope)
	}

	// Broken: the API server takes it, the agent refuses it and keeps
	// the last valid version.
	scopes.update("crd-e2e", `{subject: {cgroup: "/callscope-test-*/crd"}, egress: [{to: [{cidr: 127.0.0.1/32}], ports: ["90-80"]}]}`)
	waitUntil(t, "the refusal", 5*time.Second, func() bool { return a.metric(t, `callscope_policy_objects{state="stale"}`) == "1" })
	if want := `callscope crd-e2e: spec.egress[0].ports[0]: \"90-80\" is an empty range: 90 is above 80`; !strings.Contains(a.log.String(), want) {
		t.Errorf("the agent's log lacks %s", want)
	}
	from = a.written()
	time.Sleep(200 * time.Millisecond)
	if v := a.awaitVersion(t, cg, from, changed, 5*time.Second); v.Scope.Verdict != "violation" {
		t.Errorf("with the object broken: %+v, want its last valid version to judge", v.Scope)
	}
	if got := a.metric(t, "callscope_policy_objects_rejected_total"); got != "1" {
		t.Errorf("callscope_policy_objects_rejected_total %s, want 1", got)
	}

	// The API server gone: the objects read stay in force.
	fwd.Cut()
	waitUntil(t, "the watch to fail", time.Minute, func() bool { return a.metric(t, "callscope_policy_objects_synced") == "0" })
	if !strings.Contains(a.log.String(), "cannot reach the API server; the objects last read stay in force") {
		t.Error("the outage is not logged")
	}
	from = a.written()
	time.Sleep(200 * time.Millisecond)
	if v := a.awaitVersion(t, cg, from, changed, 5*time.Second); v.Scope.Verdict != "violation" {
		t.Errorf("with the API server gone: %+v", v.Scope)
	}
	t.Logf("with the API server gone: callscope_policy_objects_watch_failures_total %s", a.metric(t, "callscope_policy_objects_watch_failures_total"))
	fwd.Up(t)
	waitUntil(t, "the watch back", time.Minute, func() bool { return a.metric(t, "callscope_policy_objects_synced") == "1" })

	// Deleted: the files alone again.
	from = a.written()
	scopes.delete("crd-e2e")
	accepted = time.Now()
	v = a.awaitVersion(t, cg, from, filesOnly, 5*time.Second)
	t.Logf("from the API server accepting the deletion to the first verdict without the object: %v", v.read.Sub(accepted))
	if v.Scope.Verdict != "unscoped" {
		t.Errorf("after the deletion: %+v, want unscoped", v.Scope)
	}
}

// TestAgentStartsWithoutAPIServer starts the agent with its API server
// unreachable: it captures and judges with the policy files, says so,
// and takes the objects in once the API server answers.
func TestAgentStartsWithoutAPIServer(t *testing.T) {
	kerneltest.Require(t)
	cp := deployed(t)
	scopes := adminScopes(t, cp)
	open := listenAny(t, "127.0.0.1:0")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file.yaml"), []byte(fileScope), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := `{subject: {cgroup: "/callscope-test-*/filed"}, egress: [{to: [{cidr: 10.0.0.0/8}]}]}`
	scopes.create("crd-late", spec)

	fwd := cp.Forward(t, false)
	kubeconfig := agentKubeconfig(t, cp, fwd)
	began := time.Now()
	// The agent waits for pods and objects for 30 s before it gives up.
	a := startAgentWithin(t, time.Minute, "--kubeconfig", kubeconfig, "--policy", dir, "--metrics-auth", "none")
	t.Logf("ready after %v with the API server unreachable", time.Since(began))
	for _, want := range []string{"cannot read them from the API server", "connection refused", "CallScope objects not read yet"} {
		if !strings.Contains(a.log.String(), want) {
			t.Errorf("the agent's log lacks %q", want)
		}
	}
	cg := kerneltest.NewCgroup(t, "filed")
	caller(t, cg, open)
	if v := a.awaitVersion(t, cg, 0, versionOf(t, fileScope), 5*time.Second); v.Scope.Verdict != "allowed" || v.Scope.Rule != "e2e-file/egress[0]" {
		t.Errorf("with the files alone: %+v, want allowed by e2e-file/egress[0]", v.Scope)
	}
	if got := a.metric(t, "callscope_policy_objects_synced"); got != "0" {
		t.Errorf("callscope_policy_objects_synced %s, want 0", got)
	}

	from := a.written()
	fwd.Up(t)
	a.awaitVersion(t, cg, from, versionOf(t, fileScope, callScopeDoc("crd-late", spec)), time.Minute)
	if got := a.metric(t, "callscope_policy_objects_synced"); got != "1" {
		t.Errorf("callscope_policy_objects_synced %s once the objects are in, want 1", got)
	}
}
