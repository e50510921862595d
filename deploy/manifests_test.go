package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

const (
	namespace   = "callscope"
	metricsPort = 9470
)

// strictSerializer decodes manifests into client-go's types, failing on
// unknown and duplicate fields, as `kubectl apply` with server-side field
// validation does.
var strictSerializer = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
	kjson.SerializerOptions{Yaml: true, Strict: true})

// manifest is one document of a file under kubernetes/.
type manifest struct {
	file string // relative to deploy/
	doc  []byte
	obj  map[string]any
	gvk  schema.GroupVersionKind
	name string
}

func (m manifest) String() string { return fmt.Sprintf("%s (%s %s)", m.file, m.gvk.Kind, m.name) }

// manifests reads every object under kubernetes/, kustomization files
// aside.
func manifests(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	err := filepath.WalkDir("kubernetes", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".yaml") || d.Name() == "kustomization.yaml" {
			return nil
		}
		for _, doc := range yamlDocs(t, path) {
			obj := toObject(t, doc)
			apiVersion, _ := obj["apiVersion"].(string)
			kind, _ := obj["kind"].(string)
			gv, err := schema.ParseGroupVersion(apiVersion)
			if err != nil || kind == "" {
				t.Fatalf("%s: a document without a valid apiVersion and kind", path)
			}
			md, _ := obj["metadata"].(map[string]any)
			name, _ := md["name"].(string)
			out = append(out, manifest{file: path, doc: doc, obj: obj, gvk: gv.WithKind(kind), name: name})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no manifests under kubernetes/")
	}
	return out
}

// findNamed returns the manifest of a kind and name.
func findNamed(t *testing.T, ms []manifest, kind, name string) manifest {
	t.Helper()
	for _, m := range ms {
		if m.gvk.Kind == kind && m.name == name {
			return m
		}
	}
	t.Fatalf("no %s %s under kubernetes/", kind, name)
	return manifest{}
}

// The ClusterRoles: the agent's own, and the one for its scrapers.
const (
	agentRole         = "callscope"
	metricsReaderRole = "callscope-metrics-reader"
)

// find returns the one manifest of a kind.
func find(t *testing.T, ms []manifest, kind string) manifest {
	t.Helper()
	var found []manifest
	for _, m := range ms {
		if m.gvk.Kind == kind {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s under kubernetes/, found %d", kind, len(found))
	}
	return found[0]
}

// decodeStrict decodes a manifest into its client-go type.
func decodeStrict[T runtime.Object](t *testing.T, m manifest) T {
	t.Helper()
	obj, _, err := strictSerializer.Decode(m.doc, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", m, err)
	}
	typed, ok := obj.(T)
	if !ok {
		t.Fatalf("%s: decoded as %T", m, obj)
	}
	return typed
}

// unstructuredKinds are the kinds client-go has no types for; their own
// tests check them.
var unstructuredKinds = map[schema.GroupVersionKind]bool{
	{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}: true,
	{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}:          true,
	{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"}:          true,
}

func TestManifestsDecodeStrictly(t *testing.T) {
	for _, m := range manifests(t) {
		t.Run(m.file+"/"+m.gvk.Kind, func(t *testing.T) {
			switch {
			case scheme.Scheme.Recognizes(m.gvk):
				obj, _, err := strictSerializer.Decode(m.doc, nil, nil)
				if err != nil {
					t.Fatalf("%s: %v", m, err)
				}
				meta, ok := obj.(interface {
					GetNamespace() string
					GetLabels() map[string]string
				})
				if !ok {
					t.Fatalf("%s: %T has no metadata", m, obj)
				}
				if meta.GetLabels()["app.kubernetes.io/name"] != "callscope" {
					t.Errorf("%s: want label app.kubernetes.io/name=callscope", m)
				}
				scoped, err := isNamespaced(m.gvk)
				if err != nil {
					t.Fatal(err)
				}
				if scoped && meta.GetNamespace() != namespace {
					t.Errorf("%s: namespace %q, want %q", m, meta.GetNamespace(), namespace)
				}
			case unstructuredKinds[m.gvk]:
				// The CRD and the Prometheus Operator objects, checked
				// by TestCRD* and TestPrometheus*.
			default:
				t.Fatalf("%s: %s is neither a client-go type nor one this package checks", m, m.gvk)
			}
		})
	}
}

// isNamespaced knows the scope of the built-in kinds used here.
func isNamespaced(gvk schema.GroupVersionKind) (bool, error) {
	switch gvk.Kind {
	case "Namespace", "ClusterRole", "ClusterRoleBinding":
		return false, nil
	case "ServiceAccount", "ConfigMap", "Service", "DaemonSet":
		return true, nil
	}
	return false, fmt.Errorf("scope of %s not known to this test", gvk.Kind)
}

// agentContainer is the DaemonSet and its agent container.
func agentContainer(t *testing.T) (*appsv1.DaemonSet, corev1.Container) {
	t.Helper()
	ds := decodeStrict[*appsv1.DaemonSet](t, find(t, manifests(t), "DaemonSet"))
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "agent" {
			return ds, c
		}
	}
	t.Fatal("DaemonSet has no container named agent")
	return nil, corev1.Container{}
}

// daemonSetCaps is the capability list of the DaemonSet, which the
// capability tests and the systemd unit must agree with.
func daemonSetCaps(t *testing.T) []string {
	t.Helper()
	_, c := agentContainer(t)
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the agent container sets no capabilities")
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, string(c))
	}
	return caps
}

// flagValues maps each --flag=value of a command line to its value.
func flagValues(t *testing.T, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			continue
		}
		out[name] = value
	}
	return out
}

func TestDaemonSet(t *testing.T) {
	ds, c := agentContainer(t)
	pod := ds.Spec.Template.Spec

	if !pod.HostPID {
		t.Error("hostPID: the agent reads /proc/<pid> of every process on the node")
	}
	if pod.HostNetwork {
		t.Error("hostNetwork: not needed, the programs see every network namespace from the root cgroup")
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Error("want a toleration of every taint (operator: Exists), so that every node runs the agent")
	}
	if pod.ServiceAccountName != "callscope" {
		t.Errorf("serviceAccountName %q, want callscope", pod.ServiceAccountName)
	}

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext with capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: the capabilities are enough")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("want readOnlyRootFilesystem: true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("want allowPrivilegeEscalation: false")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	for _, cp := range sc.Capabilities.Add {
		if cp == "SYS_ADMIN" || cp == "ALL" {
			t.Errorf("capabilities.add holds %s", cp)
		}
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 0 {
		t.Error("want runAsUser: 0: the capabilities are a root process's bounding set")
	}
	if psc == nil || psc.SeccompProfile == nil {
		t.Error("want a seccompProfile, set deliberately")
	}

	flags := flagValues(t, c.Args)
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("args %v: want the run command first", c.Args)
	}
	if flags["metrics-addr"] != fmt.Sprintf("0.0.0.0:%d", metricsPort) {
		t.Errorf("--metrics-addr=%q: probes and Prometheus reach the agent on the pod's address, port %d", flags["metrics-addr"], metricsPort)
	}
	if flags["metrics-auth"] != "kubernetes" {
		t.Errorf("--metrics-auth=%q: on the pod's address, /metrics must be for scrapers RBAC allows (kubernetes)", flags["metrics-auth"])
	}

	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	// mounted checks that a path in the container is a volume of the kind
	// wanted, read-only or not.
	mounted := func(path string, readOnly bool, check func(corev1.Volume) string) {
		t.Helper()
		m, ok := mounts[path]
		if !ok {
			t.Errorf("nothing is mounted at %s", path)
			return
		}
		if m.ReadOnly != readOnly {
			t.Errorf("%s: readOnly %v, want %v", path, m.ReadOnly, readOnly)
		}
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("%s: no volume %q", path, m.Name)
			return
		}
		if problem := check(v); problem != "" {
			t.Errorf("%s: %s", path, problem)
		}
	}
	hostPath := func(want string) func(corev1.Volume) string {
		return func(v corev1.Volume) string {
			if v.HostPath == nil || v.HostPath.Path != want {
				return fmt.Sprintf("want hostPath %s", want)
			}
			return ""
		}
	}
	mounted(flags["policy"], true, func(v corev1.Volume) string {
		if v.ConfigMap == nil || v.ConfigMap.Name != "callscope-policies" {
			return "--policy must be the callscope-policies ConfigMap"
		}
		return ""
	})
	mounted(flags["cgroup-root"], true, hostPath("/sys/fs/cgroup"))
	mounted("/sys/kernel/btf", true, hostPath("/sys/kernel/btf"))
	mounted("/sys/kernel/tracing", true, hostPath("/sys/kernel/tracing"))
	mounted(flags["spool-dir"], false, hostPath("/var/lib/callscope/spool"))

	var nodeName bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("want NODE_NAME from spec.nodeName: the agent watches the pods of its node by that name")
	}

	var port *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == "metrics" {
			port = &c.Ports[i]
		}
	}
	if port == nil || port.ContainerPort != metricsPort {
		t.Errorf("want container port %d named metrics", metricsPort)
	}
	// With --metrics-auth=kubernetes the port speaks TLS only.
	probe := func(name string, p *corev1.Probe, path string) {
		t.Helper()
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "metrics" || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("%s: want an HTTPS GET of %s on port metrics", name, path)
		}
	}
	probe("livenessProbe", c.LivenessProbe, "/healthz")
	probe("readinessProbe", c.ReadinessProbe, "/readyz")

	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("want CPU and memory requests and a memory limit")
	}
}

// TestAgentFlags keeps the command lines of the DaemonSet and the systemd
// unit to flags the agent has.
func TestAgentFlags(t *testing.T) {
	out, _ := exec.Command(agentBinary(t), "run", "-h").CombinedOutput()
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		known[m[1]] = true
	}
	if !known["policy"] || !known["metrics-addr"] {
		t.Fatalf("could not read the flags from `callscope run -h`:\n%s", out)
	}
	_, c := agentContainer(t)
	unit := readUnit(t)
	for source, args := range map[string][]string{
		"kubernetes/daemonset.yaml": c.Args[1:],
		"vagrant/callscope.service": unit.execStart[2:],
	} {
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !known[name] {
				t.Errorf("%s: `callscope run` has no flag --%s", source, name)
			}
		}
	}
}

func TestRBAC(t *testing.T) {
	ms := manifests(t)
	role := decodeStrict[*rbacv1.ClusterRole](t, findNamed(t, ms, "ClusterRole", agentRole))
	binding := decodeStrict[*rbacv1.ClusterRoleBinding](t, findNamed(t, ms, "ClusterRoleBinding", agentRole))
	sa := decodeStrict[*corev1.ServiceAccount](t, find(t, ms, "ServiceAccount"))

	type grant struct{ group, resource, verb string }
	granted := map[grant]bool{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("ClusterRole grants a wildcard: %+v", r)
					}
					granted[grant{g, res, v}] = true
				}
			}
		}
	}
	want := []grant{
		{"", "pods", "get"}, {"", "pods", "list"}, {"", "pods", "watch"},
		{"", "namespaces", "list"}, {"", "namespaces", "watch"},
		// The callee index, cluster-wide.
		{"", "services", "list"}, {"", "services", "watch"},
		{"discovery.k8s.io", "endpointslices", "list"}, {"discovery.k8s.io", "endpointslices", "watch"},
		{"apps", "replicasets", "get"},
		{"batch", "jobs", "get"},
		{"callscope.dev", "callscopes", "list"}, {"callscope.dev", "callscopes", "watch"},
		// --metrics-auth=kubernetes.
		{"authentication.k8s.io", "tokenreviews", "create"},
		{"authorization.k8s.io", "subjectaccessreviews", "create"},
	}
	for _, g := range want {
		if !granted[g] {
			t.Errorf("ClusterRole lacks %s on %s in group %q", g.verb, g.resource, g.group)
		}
		delete(granted, g)
	}
	for g := range granted {
		t.Errorf("ClusterRole grants %s on %s in group %q, which the agent does not use", g.verb, g.resource, g.group)
	}

	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Name {
		t.Errorf("ClusterRoleBinding refers to %s %s, want ClusterRole %s", binding.RoleRef.Kind, binding.RoleRef.Name, role.Name)
	}
	if !slices.ContainsFunc(binding.Subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == sa.Name && s.Namespace == sa.Namespace
	}) {
		t.Errorf("ClusterRoleBinding does not bind ServiceAccount %s/%s", sa.Namespace, sa.Name)
	}
	if slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return len(r.NonResourceURLs) > 0 }) {
		t.Error("the agent's ClusterRole grants non-resource URLs, which it does not get")
	}

	// Its scrapers may get /metrics and nothing else.
	reader := decodeStrict[*rbacv1.ClusterRole](t, findNamed(t, ms, "ClusterRole", metricsReaderRole))
	wantRules := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}
	if !reflect.DeepEqual(reader.Rules, wantRules) {
		t.Errorf("ClusterRole %s grants %+v, want %+v", metricsReaderRole, reader.Rules, wantRules)
	}
}

func TestService(t *testing.T) {
	ds, _ := agentContainer(t)
	svc := decodeStrict[*corev1.Service](t, find(t, manifests(t), "Service"))
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selects %s=%s, which the agent's pods do not carry", k, v)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != metricsPort {
		t.Fatalf("want one Service port %d named metrics, have %+v", metricsPort, svc.Spec.Ports)
	}
	if p := svc.Spec.Ports[0].AppProtocol; p == nil || *p != "https" {
		t.Errorf("Service port metrics: want appProtocol https, as the agent serves it with --metrics-auth=kubernetes")
	}
}

// TestKustomizations checks that each kustomization lists every manifest
// beside it and only files that exist, and, where kubectl is installed,
// that it builds.
func TestKustomizations(t *testing.T) {
	var dirs []string
	filepath.WalkDir("kubernetes", func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if len(dirs) == 0 {
		t.Fatal("no kustomization.yaml under kubernetes/")
	}
	for _, dir := range dirs {
		var k struct {
			APIVersion string   `json:"apiVersion"`
			Kind       string   `json:"kind"`
			Namespace  string   `json:"namespace"`
			Resources  []string `json:"resources"`
			Images     []struct {
				Name   string `json:"name"`
				NewTag string `json:"newTag"`
			} `json:"images"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		j, err := utilyaml.ToJSON(b)
		if err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		if k.Kind != "Kustomization" || k.Namespace != namespace {
			t.Errorf("%s/kustomization.yaml: want kind Kustomization and namespace %s", dir, namespace)
		}
		entries, _ := os.ReadDir(dir)
		var files []string
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" {
				files = append(files, e.Name())
			}
		}
		listed := slices.Clone(k.Resources)
		sort.Strings(listed)
		if !slices.Equal(files, listed) {
			t.Errorf("%s/kustomization.yaml lists %v; the folder holds %v", dir, listed, files)
		}
	}

	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("kubectl is not installed: kustomize builds not checked")
		return
	}
	for _, dir := range dirs {
		if out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput(); err != nil {
			t.Errorf("kubectl kustomize %s: %v\n%s", dir, err, out)
		}
	}
}
