package metricsserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/internal/kubetest"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// reviewCalls counts the reviews the agent sends the API server, and
// fails the first of each kind with a 500 when failFirst is set.
type reviewCalls struct {
	next                 http.RoundTripper
	failFirst            bool
	tokens, access       atomic.Int32
	failedTok, failedAcc atomic.Bool
}

func (c *reviewCalls) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case strings.HasSuffix(req.URL.Path, "/tokenreviews"):
		c.tokens.Add(1)
		if c.failFirst && c.failedTok.CompareAndSwap(false, true) {
			return internalError(req), nil
		}
	case strings.HasSuffix(req.URL.Path, "/subjectaccessreviews"):
		c.access.Add(1)
		if c.failFirst && c.failedAcc.CompareAndSwap(false, true) {
			return internalError(req), nil
		}
	}
	return c.next.RoundTrip(req)
}

// internalError is the API server's answer when it fails inside.
func internalError(req *http.Request) *http.Response {
	body := `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcdserver: leader changed","reason":"InternalError","code":500}`
	return &http.Response{
		StatusCode: http.StatusInternalServerError,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(body)),
		Request:    req,
	}
}

func (c *reviewCalls) counts() (int, int) { return int(c.tokens.Load()), int(c.access.Load()) }

// countedAgent is the agent's clientset, its reviews counted.
func countedAgent(t *testing.T, cp *kubetest.ControlPlane, calls *reviewCalls) kubernetes.Interface {
	t.Helper()
	cfg := cp.ConfigFor(cp.Token(t, testNS, "agent"))
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { calls.next = rt; return calls }
	return kubernetes.NewForConfigOrDie(cfg)
}

// authServer serves h behind a's checks over plain HTTP: TLS is not what
// these tests are about.
func authServer(t *testing.T, a *kubeAuth, h http.Handler) func(header string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(a.wrap(h))
	t.Cleanup(srv.Close)
	return func(header string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// waitRBAC waits for the API server's authoriser to answer allowed about
// user getting /metrics: a binding takes effect when its informer sees it.
func waitRBAC(t *testing.T, admin kubernetes.Interface, user string, allowed bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:                  user,
			Groups:                []string{"system:serviceaccounts", "system:authenticated"},
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"},
		}}, metav1.CreateOptions{})
		return err == nil && res.Status.Allowed == allowed, nil
	})
	if err != nil {
		t.Fatalf("RBAC never answered allowed=%v for %s: %v", allowed, user, err)
	}
}

// TestAnswersKept binds and unbinds a service account while the agent's
// clock moves on: each answer stands, and is not asked again, for as long
// as its kind is kept, and no longer.
func TestAnswersKept(t *testing.T) {
	cp := controlPlane(t)
	admin := cp.Client(t)
	ctx := context.Background()
	const name = "newcomer"
	if _, err := admin.CoreV1().ServiceAccounts(testNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.CoreV1().ServiceAccounts(testNS).Delete(ctx, name, metav1.DeleteOptions{}) })
	userName := "system:serviceaccount:" + testNS + ":" + name
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "metricsserver-test-" + name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "metricsserver-test-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: testNS}},
	}
	t.Cleanup(func() { admin.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}) })

	calls := &reviewCalls{}
	clock := &fakeClock{now: time.Now()}
	scrape := authServer(t, newKubeAuthWithClock(countedAgent(t, cp, calls), slog.Default(), clock), testMetrics())
	header := "Bearer " + cp.Token(t, testNS, name)

	step := func(what string, wantCode, wantTokens, wantAccess int) {
		t.Helper()
		code, body := scrape(header)
		tokens, access := calls.counts()
		if code != wantCode || tokens != wantTokens || access != wantAccess {
			t.Fatalf("%s: %d %q after %d TokenReviews and %d SubjectAccessReviews, want %d after %d and %d",
				what, code, body, tokens, access, wantCode, wantTokens, wantAccess)
		}
	}

	step("unbound", http.StatusForbidden, 1, 1)
	step("unbound, again", http.StatusForbidden, 1, 1)

	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRBAC(t, admin, userName, true)
	step("bound, the denial kept", http.StatusForbidden, 1, 1)
	clock.step(denyCacheTTL + time.Second) // 31 s
	step("bound, the denial expired", http.StatusOK, 1, 2)

	if err := admin.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRBAC(t, admin, userName, false)
	step("unbound, the allowance kept", http.StatusOK, 1, 2)
	clock.step(tokenCacheTTL) // 91 s: the token is reviewed again
	step("unbound, the token's review expired, the allowance kept", http.StatusOK, 2, 2)
	clock.step(allowCacheTTL - tokenCacheTTL + time.Second) // 332 s, 301 s after the allowance
	step("unbound, the allowance expired", http.StatusForbidden, 3, 3)
}

// TestBearerHeader parses Authorization as the API server does, and keeps
// the token from the handler behind.
func TestBearerHeader(t *testing.T) {
	cp := controlPlane(t)
	calls := &reviewCalls{}
	seen := make(chan string, 1)
	scrape := authServer(t, newKubeAuth(countedAgent(t, cp, calls), slog.Default()),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- r.Header.Get("Authorization")
			io.WriteString(w, "page")
		}))
	token := cp.Token(t, testNS, "scraper")

	for _, c := range []struct {
		name, header string
		want         int
	}{
		{"Bearer", "Bearer " + token, http.StatusOK},
		{"scheme in lower case", "bearer " + token, http.StatusOK},
		{"words after the token", "BEARER " + token + " trailing words", http.StatusOK},
		{"two spaces before the token", "Bearer  " + token, http.StatusUnauthorized},
		{"no scheme", token, http.StatusUnauthorized},
		{"scheme only", "Bearer", http.StatusUnauthorized},
		{"basic", "Basic c2NyYXBlcjpzZWNyZXQ=", http.StatusUnauthorized},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := scrape(c.header)
			if code != c.want {
				t.Fatalf("Authorization %q: %d %q, want %d", c.header, code, body, c.want)
			}
			if code == http.StatusOK {
				if got := <-seen; got != "" {
					t.Errorf("the handler saw Authorization %q; want it removed", got)
				}
			}
		})
	}
	// The header that holds no token was refused without asking.
	if tokens, _ := calls.counts(); tokens != 1 {
		t.Errorf("%d TokenReviews, want 1: one token, its answer kept", tokens)
	}
}

// TestTransientFailureRetried has the API server fail the first
// TokenReview and the first SubjectAccessReview inside: each is asked
// again, and the scrape served.
func TestTransientFailureRetried(t *testing.T) {
	cp := controlPlane(t)
	calls := &reviewCalls{failFirst: true}
	scrape := authServer(t, newKubeAuth(countedAgent(t, cp, calls), slog.Default()), testMetrics())
	code, body := scrape("Bearer " + cp.Token(t, testNS, "scraper"))
	if code != http.StatusOK || !strings.Contains(body, "callscope_test_scrapes_total 42") {
		t.Errorf("scrape with a 500 on the first try of each review: %d %q, want 200 and the page", code, body)
	}
	if tokens, access := calls.counts(); tokens != 2 || access != 2 {
		t.Errorf("%d TokenReviews and %d SubjectAccessReviews, want 2 of each", tokens, access)
	}
}

// TestReviewFailureLogged checks that an agent the API server will not
// answer says so, at warning level, once however many scrapes fail.
func TestReviewFailureLogged(t *testing.T) {
	cp := controlPlane(t)
	// A token of no account: the API server refuses the agent itself.
	cfg := cp.ConfigFor("not-a-token")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	scrape := authServer(t, newKubeAuth(kubernetes.NewForConfigOrDie(cfg), log), testMetrics())
	token := "Bearer " + cp.Token(t, testNS, "scraper")
	for range 3 {
		if code, body := scrape(token); code != http.StatusUnauthorized {
			t.Fatalf("scrape while the agent's own token is refused: %d %q, want 401", code, body)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "token review failed") {
		t.Errorf("log %q, want one warning that the token review failed", logs.String())
	}
}

func TestWithAuthenticated(t *testing.T) {
	for _, c := range []struct {
		name         string
		groups, want []string
	}{
		{"alice", nil, []string{"system:authenticated"}},
		{"alice", []string{"dev"}, []string{"dev", "system:authenticated"}},
		{"alice", []string{"system:authenticated", "dev"}, []string{"system:authenticated", "dev"}},
		{"alice", []string{"system:unauthenticated"}, []string{"system:unauthenticated"}},
		{"system:anonymous", nil, nil},
	} {
		in := slices.Clone(c.groups)
		if got := withAuthenticated(c.name, in); !slices.Equal(got, c.want) {
			t.Errorf("withAuthenticated(%q, %q) = %q, want %q", c.name, c.groups, got, c.want)
		}
		if !slices.Equal(in, c.groups) {
			t.Errorf("withAuthenticated(%q, %q) changed its argument to %q", c.name, c.groups, in)
		}
	}
}
