package metricsserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
)

// kubeAuth lets a request through when the API server says its bearer
// token is valid (TokenReview) and that its user may get the request's
// path, a non-resource URL (SubjectAccessReview), as RBAC's
// nonResourceURLs rules grant:
//
//	rules:
//	  - nonResourceURLs: [/metrics]
//	    verbs: [get]
//
// It asks as k8s.io/apiserver's delegating authenticator and authoriser
// do, through the typed clients: that library would bring a whole API
// server's worth of code and memory into every node's agent.
type kubeAuth struct {
	tokens *tokenReviewer
	access *accessReviewer
	log    *slog.Logger

	mu      sync.Mutex
	lastErr time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func newKubeAuth(client kubernetes.Interface, log *slog.Logger) *kubeAuth {
	return newKubeAuthWithClock(client, log, realClock{})
}

// newKubeAuthWithClock lets tests age the caches.
func newKubeAuthWithClock(client kubernetes.Interface, log *slog.Logger, clock cache.Clock) *kubeAuth {
	return &kubeAuth{
		tokens: newTokenReviewer(client.AuthenticationV1().TokenReviews(), clock),
		access: newAccessReviewer(client.AuthorizationV1().SubjectAccessReviews(), clock),
		log:    log,
	}
}

// wrap answers 401 without a token the API server accepts, 403 to a user
// RBAC does not allow, and 500 when the API server cannot be asked about
// access: never the page.
func (a *kubeAuth) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := a.tokens.authenticate(r)
		if err != nil {
			// As the API server answers: an invalid token and a
			// TokenReview that failed are both 401. A refused token
			// repeats every scrape, so it is logged at debug level only.
			var unasked *reviewError
			if errors.As(err, &unasked) {
				a.logError("token review failed", err)
			}
			a.log.Debug("metrics request refused: no valid bearer token", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		verb := strings.ToLower(r.Method)
		ok, reason, err := a.access.allowed(r.Context(), u, verb, r.URL.Path)
		if err != nil {
			a.logError("subject access review failed", err)
			http.Error(w, "Internal Server Error: cannot review access with the Kubernetes API server", http.StatusInternalServerError)
			return
		}
		if !ok {
			a.log.Debug("metrics request refused", "user", u.name, "verb", verb, "path", r.URL.Path, "reason", reason)
			http.Error(w, fmt.Sprintf("Forbidden: user %q may not %s %s", u.name, verb, r.URL.Path), http.StatusForbidden)
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
