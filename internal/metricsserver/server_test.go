package metricsserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/internal/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

const testNS = "metricsserver-test"

// rbac is what the tests' service accounts may do: the agent reviews
// tokens and access, as deploy/'s ClusterRole lets it; the scraper may get
// /metrics; the stranger is bound to nothing.
const rbac = `
apiVersion: v1
kind: Namespace
metadata:
  name: metricsserver-test
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: metricsserver-test}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: scraper, namespace: metricsserver-test}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stranger, namespace: metricsserver-test}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: metricsserver-test-reviewer}
rules:
  - apiGroups: [authentication.k8s.io]
    resources: [tokenreviews]
    verbs: [create]
  - apiGroups: [authorization.k8s.io]
    resources: [subjectaccessreviews]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: metricsserver-test-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metricsserver-test-reviewer}
subjects:
  - {kind: ServiceAccount, name: agent, namespace: metricsserver-test}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: metricsserver-test-reader}
rules:
  - nonResourceURLs: [/metrics]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: metricsserver-test-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metricsserver-test-reader}
subjects:
  - {kind: ServiceAccount, name: scraper, namespace: metricsserver-test}
`

var applyOnce sync.Once

// controlPlane is the shared control plane with the tests' RBAC applied.
func controlPlane(t *testing.T) *kubetest.ControlPlane {
	t.Helper()
	cp := kubetest.Get(t)
	applyOnce.Do(func() {
		path := filepath.Join(t.TempDir(), "rbac.yaml")
		if err := os.WriteFile(path, []byte(rbac), 0o644); err != nil {
			t.Fatal(err)
		}
		cp.Apply(t, path)
	})
	return cp
}

// agentClient is a clientset of the agent's service account, talking to
// host (default the API server itself).
func agentClient(t *testing.T, cp *kubetest.ControlPlane, host string) kubernetes.Interface {
	t.Helper()
	cfg := cp.ConfigFor(cp.Token(t, testNS, "agent"))
	if host != "" {
		cfg.Host = host
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// testMetrics is a registry holding one counter, so that a 200 can be told
// to carry the page.
func testMetrics() http.Handler {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "callscope_test_scrapes_total", Help: "test"})
	c.Add(42)
	reg.MustRegister(c)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

func okHandler(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
}

// startServer starts a server on a free loopback port with the
// Kubernetes auth, stopped when the test ends.
func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Protected == nil {
		cfg.Protected = map[string]http.Handler{"/metrics": testMetrics()}
	}
	cfg.Open = map[string]http.Handler{"/healthz": okHandler("healthy\n"), "/readyz": okHandler("ready\n")}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s
}

// get fetches path with an optional bearer token over TLS trusting ca.
func get(t *testing.T, s *Server, ca *x509.Certificate, path, token string) (int, string) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "https://"+s.Addr().String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestKubernetesAuth(t *testing.T) {
	cp := controlPlane(t)
	s := startServer(t, Config{Auth: AuthKubernetes, Kube: agentClient(t, cp, "")})
	ca := s.selfSignedCA

	// A service account token whose account is gone: TokenReview refuses
	// it, as it does a forged one.
	admin := cp.Client(t)
	if _, err := admin.CoreV1().ServiceAccounts(testNS).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gone"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	goneToken := cp.Token(t, testNS, "gone")
	if err := admin.CoreV1().ServiceAccounts(testNS).Delete(context.Background(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name, path, token string
		code              int
		body              string
	}{
		{"reader's token", "/metrics", cp.Token(t, testNS, "scraper"), http.StatusOK, "callscope_test_scrapes_total 42"},
		{"unbound token", "/metrics", cp.Token(t, testNS, "stranger"), http.StatusForbidden, `"system:serviceaccount:metricsserver-test:stranger" may not get /metrics`},
		{"no token", "/metrics", "", http.StatusUnauthorized, "Unauthorized"},
		{"forged token", "/metrics", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl", http.StatusUnauthorized, "Unauthorized"},
		{"deleted account's token", "/metrics", goneToken, http.StatusUnauthorized, "Unauthorized"},
		{"healthz without token", "/healthz", "", http.StatusOK, "healthy"},
		{"readyz without token", "/readyz", "", http.StatusOK, "ready"},
		{"readyz with an unbound token", "/readyz", cp.Token(t, testNS, "stranger"), http.StatusOK, "ready"},
		{"unknown path", "/debug/pprof/", "", http.StatusNotFound, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := get(t, s, ca, c.path, c.token)
			if code != c.code || !strings.Contains(body, c.body) {
				t.Errorf("GET %s: %d %q, want %d with %q", c.path, code, body, c.code, c.body)
			}
		})
	}

	// The admin is allowed everything, through system:masters: the
	// authorisation asked is RBAC's, not a list of service accounts.
	if code, _ := get(t, s, ca, "/metrics", cp.AdminToken); code != http.StatusOK {
		t.Errorf("admin's scrape: %d, want 200", code)
	}
}
