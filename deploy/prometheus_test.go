package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/callscope/callscope/scope"
)

// contractMetrics are the metric names the contract fixes, which alerts
// may rely on.
var contractMetrics = []string{
	"callscope_events_total",
	"callscope_verdicts_total",
	"callscope_events_lost_total",
	"callscope_kafka_messages_delivered_total",
	"callscope_kafka_delivery_failures_total",
	"callscope_spool_bytes",
	"callscope_policy_reloads_total",
}

// agentMetrics are the metric names the agent serves: those of the
// contract, and every "callscope_..." literal in its Go sources. An alert
// on any other name would never fire.
func agentMetrics(t *testing.T) []string {
	t.Helper()
	names := slices.Clone(contractMetrics)
	literal := regexp.MustCompile(`"(callscope_[a-z_]+)"`)
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range literal.FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// field walks an unstructured object; it fails the test where the path
// does not lead to a value of type T.
func field[T any](t *testing.T, obj any, what string, path ...string) T {
	t.Helper()
	cur := obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%s: %s is not a mapping", what, p)
		}
		if cur, ok = m[p]; !ok {
			t.Fatalf("%s: missing %s", what, strings.Join(path, "."))
		}
	}
	v, ok := cur.(T)
	if !ok {
		var zero T
		t.Fatalf("%s: %s is %T, want %T", what, strings.Join(path, "."), cur, zero)
	}
	return v
}

func TestPrometheusServiceMonitor(t *testing.T) {
	ms := manifests(t)
	sm := find(t, ms, "ServiceMonitor")
	svc := decodeStrict[*corev1.Service](t, find(t, ms, "Service"))

	selector := field[map[string]any](t, sm.obj, sm.String(), "spec", "selector", "matchLabels")
	for k, v := range selector {
		if svc.Labels[k] != v {
			t.Errorf("%s selects %s=%v, which the Service does not carry", sm, k, v)
		}
	}
	names := field[[]any](t, sm.obj, sm.String(), "spec", "namespaceSelector", "matchNames")
	if !slices.Contains(names, any(namespace)) {
		t.Errorf("%s: namespaceSelector does not name %s", sm, namespace)
	}
	endpoints := field[[]any](t, sm.obj, sm.String(), "spec", "endpoints")
	if len(endpoints) == 0 {
		t.Fatalf("%s: no endpoints", sm)
	}
	for _, e := range endpoints {
		port := field[string](t, e, sm.String(), "port")
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == port }) {
			t.Errorf("%s: endpoint port %q is not a port of the Service", sm, port)
		}
		if path, ok := e.(map[string]any)["path"]; ok && path != "/metrics" {
			t.Errorf("%s: endpoint path %v, want /metrics", sm, path)
		}
		// The agent serves /metrics over TLS to a bearer token it has the
		// API server review: Prometheus's own.
		if scheme := field[string](t, e, sm.String(), "scheme"); scheme != "https" {
			t.Errorf("%s: endpoint scheme %q, want https", sm, scheme)
		}
		if f := field[string](t, e, sm.String(), "bearerTokenFile"); f != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
			t.Errorf("%s: bearerTokenFile %q, want the Prometheus pod's service account token", sm, f)
		}
		// Verification is skipped only where there is nothing to verify
		// against: the certificate the agent makes when given none.
		_, c := agentContainer(t)
		_, ownCert := flagValues(t, c.Args)["metrics-cert-file"]
		skip, _ := e.(map[string]any)["tlsConfig"].(map[string]any)["insecureSkipVerify"].(bool)
		if skip == ownCert {
			t.Errorf("%s: tlsConfig.insecureSkipVerify %v, but the DaemonSet gives --metrics-cert-file: %v", sm, skip, ownCert)
		}
	}
	if allowed := []string{"apiVersion", "kind", "metadata", "spec"}; !onlyKeys(sm.obj, allowed) {
		t.Errorf("%s: top-level fields other than %v", sm, allowed)
	}
}

// TestPrometheusBinding checks that the Prometheus objects let a
// Prometheus scrape: its service account is bound to the scrapers' role.
func TestPrometheusBinding(t *testing.T) {
	ms := manifests(t)
	b := decodeStrict[*rbacv1.ClusterRoleBinding](t, findNamed(t, ms, "ClusterRoleBinding", metricsReaderRole))
	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != metricsReaderRole {
		t.Errorf("%s binds %s %s, want ClusterRole %s", b.Name, b.RoleRef.Kind, b.RoleRef.Name, metricsReaderRole)
	}
	if len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Name == "" || b.Subjects[0].Namespace == "" {
		t.Errorf("%s: want one service account, Prometheus's, as subject; have %+v", b.Name, b.Subjects)
	}
	if m := findNamed(t, ms, "ClusterRoleBinding", metricsReaderRole); filepath.Dir(m.file) != filepath.Join("kubernetes", "prometheus") {
		t.Errorf("%s is in %s: it belongs with the Prometheus objects, whose service account it names", metricsReaderRole, m.file)
	}
}

func TestPrometheusRules(t *testing.T) {
	ms := manifests(t)
	svc := decodeStrict[*corev1.Service](t, find(t, ms, "Service"))
	applied := kustomizationFiles(t, filepath.Join("kubernetes", "prometheus"))
	noisy := kustomizationFiles(t, filepath.Join("kubernetes", "prometheus", "noisy-findings"))
	var rules []manifest
	for _, m := range ms {
		if m.gvk.Kind == "PrometheusRule" {
			rules = append(rules, m)
		}
	}
	served := agentMetrics(t)
	metricName := regexp.MustCompile(`\bcallscope_[a-z_]+`)
	seen := map[string]bool{}
	var exprs []string
	for _, pr := range rules {
		// The noisy findings' alerts ship apart, applied on their own.
		if !slices.Contains(applied, pr.file) && !slices.Contains(noisy, pr.file) {
			t.Errorf("%s: applied by neither kubernetes/prometheus nor its noisy-findings", pr.file)
		}
		exprs = append(exprs, checkRules(t, pr, svc, served, metricName, seen)...)
	}

	all := strings.Join(exprs, "\n")
	for _, want := range []struct{ about, re string }{
		{"scope violations", `rate\(callscope_verdicts_total\{[^}]*verdict="violation"`},
		{"lost events", `increase\(callscope_events_lost_total`},
		{"failing Kafka delivery", `callscope_kafka_delivery_failures_total`},
		{"a growing spool", `deriv\(callscope_spool_bytes`},
		{"an agent down", `up\{[^}]*\}\s*==\s*0`},
		{"no agent at all", `absent\(up\{`},
	} {
		if !regexp.MustCompile(want.re).MatchString(all) {
			t.Errorf("no alert on %s (no expression matches %s)", want.about, want.re)
		}
	}
	// A staged scope's would_violate is reported, never alerted on as a
	// violation: every selector of verdicts must leave it out.
	for _, sel := range verdictSelectors(all) {
		if selectsVerdict(t, sel, "would_violate") {
			t.Errorf("%s selects would_violate verdicts: staged scopes would fire it", sel)
		}
		if !selectsVerdict(t, sel, "violation") {
			t.Errorf("%s does not select violations", sel)
		}
	}
	if len(verdictSelectors(all)) == 0 {
		t.Error("no alert on callscope_verdicts_total")
	}
	for _, f := range scope.Catalogue {
		if !regexp.MustCompile(`callscope_findings_total\{[^}]*finding=~?"[^"]*\b` + f.ID + `\b`).MatchString(all) {
			t.Errorf("no alert on finding %s", f.ID)
		}
	}
}

// verdictSelectors finds the selectors of callscope_verdicts_total in
// exprs: "callscope_verdicts_total{...}", or the bare name.
func verdictSelectors(exprs string) []string {
	return regexp.MustCompile(`callscope_verdicts_total(\{[^}]*\})?`).FindAllString(exprs, -1)
}

// selectsVerdict says whether a selector of callscope_verdicts_total
// matches the series of verdict v, by its verdict matcher (=, !=, =~, !~);
// with none, it matches every verdict.
func selectsVerdict(t *testing.T, sel, v string) bool {
	t.Helper()
	m := regexp.MustCompile(`\bverdict\s*(=~|!~|!=|=)\s*"([^"]*)"`).FindAllStringSubmatch(sel, -1)
	ok := true
	for _, mm := range m {
		op, val := mm[1], mm[2]
		switch op {
		case "=":
			ok = ok && v == val
		case "!=":
			ok = ok && v != val
		case "=~", "!~":
			re, err := regexp.Compile("^(?:" + val + ")$")
			if err != nil {
				t.Fatalf("%s: %v", sel, err)
			}
			ok = ok && re.MatchString(v) == (op == "=~")
		}
	}
	return ok
}

func TestSelectsVerdict(t *testing.T) {
	for sel, want := range map[string]bool{
		`callscope_verdicts_total{job="callscope",verdict="violation"}`: false,
		`callscope_verdicts_total{verdict=~"violation|would_violate"}`:  true,
		`callscope_verdicts_total{verdict=~".*violat.*"}`:               true,
		`callscope_verdicts_total{verdict=~"violation"}`:                false,
		`callscope_verdicts_total{verdict!="allowed"}`:                  true,
		`callscope_verdicts_total{verdict!~"would_.*|allowed"}`:         false,
		`callscope_verdicts_total`:                                      true,
	} {
		if got := selectsVerdict(t, sel, "would_violate"); got != want {
			t.Errorf("%s selects would_violate: %v, want %v", sel, got, want)
		}
	}
}

// checkRules checks the rules of one PrometheusRule and returns their
// expressions.
func checkRules(t *testing.T, pr manifest, svc *corev1.Service, served []string, metricName *regexp.Regexp, seen map[string]bool) []string {
	t.Helper()
	what := pr.String()
	var exprs []string
	for _, g := range field[[]any](t, pr.obj, what, "spec", "groups") {
		field[string](t, g, what, "name")
		for _, r := range field[[]any](t, g, what, "rules") {
			alert := field[string](t, r, what, "alert")
			if seen[alert] {
				t.Errorf("%s: alert %s given twice", what, alert)
			}
			seen[alert] = true
			expr := field[string](t, r, what, "expr")
			exprs = append(exprs, expr)
			if sev := field[string](t, r, what, "labels", "severity"); sev != "warning" && sev != "critical" {
				t.Errorf("%s: %s: severity %q", what, alert, sev)
			}
			field[string](t, r, what, "annotations", "summary")
			if !balanced(expr) {
				t.Errorf("%s: %s: unbalanced brackets in %q", what, alert, expr)
			}
			for _, name := range metricName.FindAllString(expr, -1) {
				if !slices.Contains(served, name) {
					t.Errorf("%s: %s: the agent serves no metric %s", what, alert, name)
				}
			}
			// The ServiceMonitor's job label is the Service's name.
			if strings.Contains(expr, "job=") && !strings.Contains(expr, `job="`+svc.Name+`"`) {
				t.Errorf("%s: %s: want job=%q in %q", what, alert, svc.Name, expr)
			}
		}
	}

	return exprs
}

// balanced checks (), {} and [] pair up outside strings: a cheap guard
// against the commonest PromQL typos.
func balanced(expr string) bool {
	var stack []rune
	inString := false
	for _, r := range expr {
		switch {
		case r == '"':
			inString = !inString
		case inString:
		case r == '(' || r == '{' || r == '[':
			stack = append(stack, r)
		case r == ')' || r == '}' || r == ']':
			open := map[rune]rune{')': '(', '}': '{', ']': '['}[r]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && !inString
}

func onlyKeys(m map[string]any, allowed []string) bool {
	for k := range m {
		if !slices.Contains(allowed, k) {
			return false
		}
	}
	return true
}
