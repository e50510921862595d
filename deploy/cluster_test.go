package deploy

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/internal/kubetest"
	"github.com/callscope/callscope/scope"
)

// kustomizationFiles lists a kustomization's resources, as paths.
func kustomizationFiles(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := utilyaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	var files []string
	for _, r := range k.Resources {
		files = append(files, filepath.Join(dir, r))
	}
	return files
}

var (
	applyBaseOnce sync.Once
	appliedBase   []*unstructured.Unstructured
)

// deployedCluster is the shared control plane with kubernetes/ applied
// (the `kubectl apply -k deploy/kubernetes` of deploy/README.md), and the
// objects as stored.
func deployedCluster(t *testing.T) (*kubetest.ControlPlane, []*unstructured.Unstructured) {
	t.Helper()
	cp := kubetest.Get(t)
	applyBaseOnce.Do(func() { appliedBase = cp.Apply(t, kustomizationFiles(t, "kubernetes")...) })
	if appliedBase == nil {
		t.Fatal("kubernetes/ was not applied")
	}
	return cp, appliedBase
}

// TestApplyToAPIServer applies kubernetes/ to a real API server, which
// validates every object as a cluster would (the CRD's schema, the
// DaemonSet's pod template, RBAC's references), and reads them back.
func TestApplyToAPIServer(t *testing.T) {
	cp, objs := deployedCluster(t)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
		if o.GetUID() == "" {
			t.Errorf("%s %s: not stored", o.GetKind(), o.GetName())
		}
	}
	for _, k := range []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("no %s applied from kubernetes/", k)
		}
	}
	ds, err := cp.Client(t).AppsV1().DaemonSets(namespace).Get(context.Background(), "callscope", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Spec.Template.Spec.ServiceAccountName != "callscope" {
		t.Errorf("stored DaemonSet runs as %q", ds.Spec.Template.Spec.ServiceAccountName)
	}
}

// TestServiceAccountRBAC gets a token of the DaemonSet's service account
// and checks that the API server lets it do exactly what the ClusterRole
// grants: each verb on each resource it names, and not the others.
func TestServiceAccountRBAC(t *testing.T) {
	cp, _ := deployedCluster(t)
	ms := manifests(t)
	role := decodeStrict[*rbacv1.ClusterRole](t, findNamed(t, ms, "ClusterRole", agentRole))
	ds, _ := agentContainer(t)
	sa := ds.Spec.Template.Spec.ServiceAccountName

	cfg := cp.ConfigFor(cp.Token(t, namespace, sa))
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()

	// What the agent does, for real: list and watch its node's pods.
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=worker-1"}
	if _, err := client.CoreV1().Pods("").List(ctx, sel); err != nil {
		t.Errorf("list pods of a node: %v", err)
	}
	w, err := client.CoreV1().Pods("").Watch(ctx, sel)
	if err != nil {
		t.Errorf("watch pods of a node: %v", err)
	} else {
		w.Stop()
	}
	// And every pod, Service and EndpointSlice of the cluster, for the
	// callee index.
	all := metav1.ListOptions{}
	if _, err := client.CoreV1().Pods("").List(ctx, all); err != nil {
		t.Errorf("list pods of the cluster: %v", err)
	}
	if _, err := client.CoreV1().Services("").List(ctx, all); err != nil {
		t.Errorf("list services of the cluster: %v", err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("").List(ctx, all); err != nil {
		t.Errorf("list endpointslices of the cluster: %v", err)
	}
	for _, open := range []func() (watch.Interface, error){
		func() (watch.Interface, error) { return client.CoreV1().Services("").Watch(ctx, all) },
		func() (watch.Interface, error) { return client.DiscoveryV1().EndpointSlices("").Watch(ctx, all) },
	} {
		if w, err := open(); err != nil {
			t.Errorf("watch services or endpointslices: %v", err)
		} else {
			w.Stop()
		}
	}
	if _, err := client.AppsV1().ReplicaSets("default").Get(ctx, "web-7d9f", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get a replicaset that does not exist: %v, want not found (allowed)", err)
	}
	// And what it must not.
	if _, err := client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: %v, want forbidden", err)
	}
	if _, err := client.CoreV1().ConfigMaps(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list configmaps: %v, want forbidden", err)
	}

	// Every verb on every resource the role names, and on resources an
	// agent has no business with, asked of the API server's authoriser.
	verbs := []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
	type resource struct{ group, name string }
	granted := map[resource][]string{}
	var nonResource []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if len(r.NonResourceURLs) > 0 {
			nonResource = append(nonResource, r)
			continue
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				granted[resource{g, res}] = append(granted[resource{g, res}], r.Verbs...)
			}
		}
	}
	others := []resource{{"", "secrets"}, {"", "configmaps"}, {"", "nodes"}, {"", "endpoints"}, {"", "serviceaccounts/token"}, {"", "pods/exec"},
		{"apps", "daemonsets"}, {"rbac.authorization.k8s.io", "clusterroles"}, {"rbac.authorization.k8s.io", "clusterrolebindings"}}
	for _, res := range others {
		if _, ok := granted[res]; !ok {
			granted[res] = nil
		}
	}
	for res, allowed := range granted {
		for _, verb := range verbs {
			name, sub, _ := strings.Cut(res.name, "/")
			got := selfAccess(t, client, authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{Group: res.group, Resource: name, Subresource: sub, Verb: verb},
			})
			if want := slices.Contains(allowed, verb); got != want {
				t.Errorf("%s %s in group %q: allowed %v, the ClusterRole says %v", verb, res.name, res.group, got, want)
			}
		}
	}
	for _, r := range nonResource {
		for _, url := range r.NonResourceURLs {
			for _, verb := range r.Verbs {
				if !selfAccess(t, client, authorizationv1.SelfSubjectAccessReviewSpec{
					NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: url, Verb: verb},
				}) {
					t.Errorf("%s %s: not allowed, the ClusterRole grants it", verb, url)
				}
			}
		}
	}
}

// selfAccess asks the API server whether the client's user may do what
// spec says (a SelfSubjectAccessReview: `kubectl auth can-i`).
func selfAccess(t *testing.T, client kubernetes.Interface, spec authorizationv1.SelfSubjectAccessReviewSpec) bool {
	t.Helper()
	r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(),
		&authorizationv1.SelfSubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject access review: %v", err)
	}
	return r.Status.Allowed
}

// TestCRDAdmission creates CallScopes on a real API server, as `kubectl
// apply` does (field validation strict), dry run: what the schema and its
// CEL rules refuse is refused there with the API server's own error, and
// every valid form and shipped policy is taken.
func TestCRDAdmission(t *testing.T) {
	cp, _ := deployedCluster(t)
	res := dynamic.NewForConfigOrDie(cp.Config).Resource(scope.Resource)
	create := func(doc string) error {
		u := &unstructured.Unstructured{Object: toObject(t, []byte(doc))}
		_, err := res.Create(context.Background(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
		return err
	}
	refused := append(slices.Clone(schemaCases), celCases...)
	for _, c := range refused {
		t.Run("refuses/"+c.name, func(t *testing.T) {
			err := create(caseDoc(c.doc))
			if err == nil {
				t.Fatalf("the API server takes it:\n%s", caseDoc(c.doc))
			}
			if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) {
				t.Errorf("refused, but not as invalid: %v", err)
			}
			t.Log(err)
		})
	}
	for _, c := range celCases {
		t.Run("cel/"+c.name, func(t *testing.T) {
			if _, err := scope.Parse("case.yaml", []byte(caseDoc(c.doc))); err == nil {
				t.Errorf("the agent accepts it")
			}
		})
	}
	for _, c := range schemaGaps {
		t.Run("gap/"+c.name, func(t *testing.T) {
			if err := create(caseDoc(c.doc)); err != nil {
				t.Errorf("the API server now refuses it (%v): move the case to celCases", err)
			}
		})
	}
	for i, doc := range acceptCases {
		if err := create(caseDoc(doc)); err != nil {
			t.Errorf("accept case %d: %v", i, err)
		}
	}
	for _, f := range shippedPolicies(t) {
		for _, doc := range documents(t, f) {
			if err := create(string(doc)); err != nil {
				t.Errorf("%s: %v", f.name, err)
			}
		}
	}
}
