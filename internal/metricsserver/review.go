package metricsserver

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
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

// How many answers are kept, each. A node is scraped by a few Prometheus
// replicas, each with one token; the bound keeps a stream of distinct
// tokens from growing the agent (an entry is well under a KiB).
const (
	tokenCacheSize  = 1024
	accessCacheSize = 1024
)

// reviewBackoff is k8s.io/apiserver's default for delegated webhooks
// (server/options.DefaultAuthWebhookRetryBackoff): five tries over about
// 4 s.
var reviewBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}

// withRetry calls create until it succeeds, fails in a way a retry cannot
// mend, or reviewBackoff runs out, and returns create's last error.
func withRetry(ctx context.Context, create func(context.Context) error) error {
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, reviewBackoff, func(ctx context.Context) (bool, error) {
		last = create(ctx)
		if last != nil && transient(last) {
			return false, nil
		}
		return last == nil, last
	})
	switch {
	case last != nil:
		return last
	case err != nil:
		return fmt.Errorf("review not made: %w", err)
	}
	return nil
}

// transient is k8s.io/apiserver's test for a webhook call worth another
// try (util/webhook.DefaultShouldRetry): a connection cut, or an API
// server that says it is busy or failing.
func transient(err error) bool {
	if utilnet.IsConnectionReset(err) || utilnet.IsHTTP2ConnectionLost(err) ||
		apierrors.IsInternalError(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) {
		return true
	}
	_, retry := apierrors.SuggestsClientDelay(err)
	return retry
}
