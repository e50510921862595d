package metricsserver

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/client-go/kubernetes"
)

// How long the API server's answers are kept: a scraper asks every 30 s or
// so, and each agent would otherwise send a TokenReview and a
// SubjectAccessReview per scrape. A revoked binding stops working within
// allowCacheTTL; a new one starts working within denyCacheTTL. These are
// controller-runtime's and kube-rbac-proxy's values.
const (
	tokenCacheTTL = time.Minute
	allowCacheTTL = 5 * time.Minute
	denyCacheTTL  = 30 * time.Second
	reviewTimeout = 10 * time.Second
)

// reviewBackoff is k8s.io/apiserver's default for delegated webhooks
// (server/options.DefaultAuthWebhookRetryBackoff), whose package would
// bring the whole server along: five tries over about 4 s.
var reviewBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}

// kubeAuth lets a request through when the API server says its bearer
// token is valid (TokenReview) and that its user may get the request's
// path, a non-resource URL (SubjectAccessReview), as RBAC's
// nonResourceURLs rules grant:
//
//	rules:
//	  - nonResourceURLs: [/metrics]
//	    verbs: [get]
type kubeAuth struct {
	authn authenticator.Request
	authz authorizer.Authorizer
	log   *slog.Logger

	mu      sync.Mutex
	lastErr time.Time
}

func newKubeAuth(client kubernetes.Interface, log *slog.Logger) (*kubeAuth, error) {
	authn, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		TokenAccessReviewClient:  client.AuthenticationV1(),
		TokenAccessReviewTimeout: reviewTimeout,
		WebhookRetryBackoff:      &reviewBackoff,
		CacheTTL:                 tokenCacheTTL,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("token authenticator: %w", err)
	}
	authz, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: client.AuthorizationV1(),
		AllowCacheTTL:             allowCacheTTL,
		DenyCacheTTL:              denyCacheTTL,
		WebhookRetryBackoff:       &reviewBackoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("subject access authorizer: %w", err)
	}
	return &kubeAuth{authn: authn, authz: authz, log: log}, nil
}

// wrap answers 401 without a token the API server accepts, 403 to a user
// RBAC does not allow, and 500 when the API server cannot be asked about
// access: never the page.
func (a *kubeAuth) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, ok, err := a.authn.AuthenticateRequest(r)
		if err != nil || !ok {
			// As the API server answers: an invalid token and a
			// TokenReview that failed are both 401. k8s.io/apiserver logs
			// a TokenReview that failed; a refused token repeats every
			// scrape, so it is logged at debug level only.
			a.log.Debug("metrics request refused: no valid bearer token", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		attrs := authorizer.AttributesRecord{
			User:            res.User,
			Verb:            strings.ToLower(r.Method),
			Path:            r.URL.Path,
			ResourceRequest: false,
		}
		decision, reason, err := a.authz.Authorize(r.Context(), attrs)
		if err != nil {
			a.logError("subject access review failed", err)
			http.Error(w, "Internal Server Error: cannot review access with the Kubernetes API server", http.StatusInternalServerError)
			return
		}
		if decision != authorizer.DecisionAllow {
			a.log.Debug("metrics request refused", "user", res.User.GetName(), "verb", attrs.Verb, "path", attrs.Path, "reason", reason)
			http.Error(w, fmt.Sprintf("Forbidden: user %q may not %s %s", res.User.GetName(), attrs.Verb, attrs.Path), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// logError logs a failure to reach the API server at most once a minute:
// every scrape of every scraper fails the same way while it lasts.
func (a *kubeAuth) logError(msg string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if time.Since(a.lastErr) < time.Minute {
		return
	}
	a.lastErr = time.Now()
	a.log.Warn(msg+": metrics scrapes fail until the API server answers", "error", err)
}
