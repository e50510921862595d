package deploy

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/kerneltest"
)

// scrapers are two service accounts: one bound to the ClusterRole the
// manifests ship for scrapers, as kubernetes/prometheus/ binds
// Prometheus's, and one bound to nothing.
const scrapers = `
apiVersion: v1
kind: Namespace
metadata: {name: scrapers}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: scrapers}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stranger, namespace: scrapers}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: scrapers-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: callscope-metrics-reader}
subjects:
  - {kind: ServiceAccount, name: prometheus, namespace: scrapers}
`

// TestMetricsAuth runs the agent with the DaemonSet's metrics flags and a
// token of the DaemonSet's service account, so with exactly its RBAC,
// against a real API server, and scrapes it as Prometheus and as others.
func TestMetricsAuth(t *testing.T) {
	kerneltest.Require(t)
	cp, _ := deployedCluster(t)
	path := filepath.Join(t.TempDir(), "scrapers.yaml")
	if err := os.WriteFile(path, []byte(scrapers), 0o644); err != nil {
		t.Fatal(err)
	}
	cp.Apply(t, path)

	ds, c := agentContainer(t)
	flags := flagValues(t, c.Args)
	kubeconfig := cp.Kubeconfig(t, cp.Token(t, namespace, ds.Spec.Template.Spec.ServiceAccountName))
	metrics := freeAddr(t)
	a := startAgent(t, []string{agentBinary(t), "run",
		"--kubeconfig=" + kubeconfig,
		"--node-name=worker-1",
		"--metrics-addr=" + metrics,
		"--metrics-auth=" + flags["metrics-auth"],
		"--log-format=json",
		"--spool-dir=" + filepath.Join(t.TempDir(), "spool"),
	}, nil, metrics)
	a.tls = true
	if !a.waitReady(t, 30*time.Second) {
		t.Fatalf("agent exited; stderr:\n%s", a.Stderr())
	}

	// The CA of the certificate made at start is the one the agent logs:
	// a scraper can pin it.
	ca := loggedCA(t, a)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pinned := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
	}}
	// What the ServiceMonitor does.
	unverified := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}

	scrape := func(client *http.Client, path, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+metrics+path, nil)
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

	prometheus := cp.Token(t, "scrapers", "prometheus")
	for _, c := range []struct {
		name   string
		client *http.Client
		path   string
		token  string
		code   int
		body   string
	}{
		{"Prometheus, pinning the logged CA", pinned, "/metrics", prometheus, http.StatusOK, "callscope_events_total"},
		{"Prometheus, as the ServiceMonitor scrapes", unverified, "/metrics", prometheus, http.StatusOK, "callscope_events_total"},
		{"a service account without the binding", pinned, "/metrics", cp.Token(t, "scrapers", "stranger"), http.StatusForbidden, "may not get /metrics"},
		{"the agent's own service account", pinned, "/metrics", cp.Token(t, namespace, "callscope"), http.StatusForbidden, "may not get /metrics"},
		{"no token", pinned, "/metrics", "", http.StatusUnauthorized, "Unauthorized"},
		{"a forged token", pinned, "/metrics", "not-a-token", http.StatusUnauthorized, "Unauthorized"},
		{"the liveness probe", unverified, "/healthz", "", http.StatusOK, "ok"},
		{"the readiness probe", unverified, "/readyz", "", http.StatusOK, "ok"},
	} {
		code, body := scrape(c.client, c.path, c.token)
		if code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s: GET %s: %d %.200q, want %d with %q", c.name, c.path, code, body, c.code, c.body)
		}
		if code != http.StatusOK && strings.Contains(body, "callscope_") {
			t.Errorf("%s: refused, but the page was served", c.name)
		}
	}

	// Plain HTTP gets no page.
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "callscope_") {
			t.Errorf("plain HTTP: %d %.200q, want 400", resp.StatusCode, b)
		}
	}

	// The DaemonSet's RBAC let the agent follow its node's pods too.
	if strings.Contains(a.Stderr(), "pod metadata unavailable") {
		t.Errorf("the agent could not follow its node's pods with its service account's token:\n%s", a.Stderr())
	}
	if strings.Contains(a.Stderr(), "callees unavailable") {
		t.Errorf("the agent could not follow the cluster's Services, EndpointSlices and pods with its service account's token:\n%s", a.Stderr())
	}
}

// loggedCA reads the fingerprint of the CA the agent logged, and returns
// the CA of the chain it serves once it checked the two agree.
func loggedCA(t *testing.T, a *agent) *x509.Certificate {
	t.Helper()
	var logged string
	s := bufio.NewScanner(strings.NewReader(a.Stderr()))
	for s.Scan() {
		var line struct {
			Component string `json:"component"`
			CA        string `json:"ca_sha256"`
		}
		if json.Unmarshal(s.Bytes(), &line) == nil && line.CA != "" && line.Component == "metrics" {
			logged = line.CA
		}
	}
	if logged == "" {
		t.Fatalf("the agent did not log its metrics CA's fingerprint:\n%s", a.Stderr())
	}
	conn, err := tls.Dial("tcp", a.metrics, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	chain := conn.ConnectionState().PeerCertificates
	ca := chain[len(chain)-1]
	sum := sha256.Sum256(ca.Raw)
	if got := hex.EncodeToString(sum[:]); got != logged {
		t.Fatalf("the served chain ends in a CA with SHA-256 %s; the agent logged %s", got, logged)
	}
	if !ca.IsCA {
		t.Fatal("the served chain does not end in a CA")
	}
	return ca
}
