package kubetest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

func writeManifest(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServiceAccountTokenIsAuthorisedByRBAC checks that a TokenRequest
// token authenticates as its service account and gets what a RoleBinding
// grants, and nothing more, through a kubeconfig file.
func TestServiceAccountTokenIsAuthorisedByRBAC(t *testing.T) {
	cp := Get(t)
	manifest := writeManifest(t, `
apiVersion: v1
kind: Namespace
metadata:
  name: kubetest-rbac
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: kubetest-rbac
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-reader
  namespace: kubetest-rbac
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader
  namespace: kubetest-rbac
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-reader
subjects:
  - kind: ServiceAccount
    name: reader
    namespace: kubetest-rbac
`)
	objs := cp.Apply(t, manifest)
	if len(objs) != 4 || objs[3].GetUID() == "" {
		t.Fatalf("applied %d objects, want 4 stored ones", len(objs))
	}

	path := cp.Kubeconfig(t, cp.Token(t, "kubetest-rbac", "reader"))
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()

	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := review.Status.UserInfo.Username, "system:serviceaccount:kubetest-rbac:reader"; got != want {
		t.Errorf("token authenticates as %q, want %q", got, want)
	}
	if _, err := client.CoreV1().ConfigMaps("kubetest-rbac").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list configmaps, which the Role grants: %v", err)
	}
	for what, err := range map[string]error{
		"list secrets in its namespace": func() error {
			_, err := client.CoreV1().Secrets("kubetest-rbac").List(ctx, metav1.ListOptions{})
			return err
		}(),
		"list configmaps in another namespace": func() error {
			_, err := client.CoreV1().ConfigMaps(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
			return err
		}(),
		"create a configmap": func() error {
			_, err := client.CoreV1().ConfigMaps("kubetest-rbac").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}(),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want forbidden", what, err)
		}
	}

	// The API server's own authorisation answers for the token, as it will
	// for a SubjectAccessReview the agent sends.
	sar, err := cp.Client(t).AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:kubetest-rbac:reader",
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "kubetest-rbac", Verb: "list", Resource: "configmaps"},
		},
	}, metav1.CreateOptions{})
	if err != nil || !sar.Status.Allowed {
		t.Errorf("SubjectAccessReview of what the Role grants: %+v, %v", sar.Status, err)
	}
}

// TestApplyCustomResource applies a CRD and an object of its kind from one
// file: the kind must be served by the time its object is applied.
func TestApplyCustomResource(t *testing.T) {
	cp := Get(t)
	manifest := writeManifest(t, `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.kubetest.example
spec:
  group: kubetest.example
  scope: Cluster
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
---
apiVersion: kubetest.example/v1
kind: Widget
metadata:
  name: small
spec:
  size: 2
`)
	cp.Apply(t, manifest)

	dyn := dynamic.NewForConfigOrDie(cp.Config)
	w, err := dyn.Resource(schema.GroupVersionResource{Group: "kubetest.example", Version: "v1", Resource: "widgets"}).
		Get(context.Background(), "small", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if size, _, _ := unstructured.NestedInt64(w.Object, "spec", "size"); size != 2 {
		t.Errorf("stored widget has size %d, want 2", size)
	}
	if mf := w.GetManagedFields(); len(mf) == 0 || mf[0].Manager != FieldManager || mf[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("want fields managed by %s through apply, have %+v", FieldManager, mf)
	}
}

// TestMissingEtcd checks that a machine without etcd gets a MissingError,
// which Get turns into a skip or, in CI, a failure.
func TestMissingEtcd(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(Options{})
	var missing *MissingError
	if !errors.As(err, &missing) {
		t.Fatalf("Start without etcd on PATH: %v, want a MissingError", err)
	}
}

// TestAPIServerFailureSaysWhy starts a "kube-apiserver" that exits at
// once: Start gives up with the end of its output, not a timeout.
func TestAPIServerFailureSaysWhy(t *testing.T) {
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed")
	}
	fake := filepath.Join(t.TempDir(), "kube-apiserver")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'Error: unknown flag: --frobnicate' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(APIServerEnv, fake)
	cp, err := Start(Options{})
	if err == nil {
		cp.Stop()
		t.Fatal("Start succeeded with an API server that exits")
	}
	var missing *MissingError
	if errors.As(err, &missing) || !strings.Contains(err.Error(), "kube-apiserver exited") || !strings.Contains(err.Error(), "unknown flag: --frobnicate") {
		t.Errorf("error %q: want it to say the server exited, with its output", err)
	}
}
