package metricsserver

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// user is whom the API server says a token belongs to.
type user struct {
	name, uid string
	groups    []string
	extra     map[string]authenticationv1.ExtraValue
}

// tokenAnswer is a TokenReview's answer: the user, or nil when the API
// server refused the token.
type tokenAnswer struct {
	user *user
}

// errRefused is the reason for a 401 when the API server refused the token
// without saying why, or no token was given.
var errRefused = errors.New("invalid bearer token")

// tokenReviewer asks the API server whose a bearer token is, keeping its
// answers for tokenCacheTTL under the token's SHA-256, so that the cache
// holds no token.
type tokenReviewer struct {
	client authenticationv1client.TokenReviewInterface
	cache  *cache.LRUExpireCache // [sha256.Size]byte → tokenAnswer
}

func newTokenReviewer(client authenticationv1client.TokenReviewInterface, clock cache.Clock) *tokenReviewer {
	return &tokenReviewer{client: client, cache: cache.NewLRUExpireCacheWithClock(tokenCacheSize, clock)}
}

// bearerToken is the token of an "Authorization: Bearer <token>" header,
// parsed as the API server does (request/bearertoken): the scheme in any
// case, one space, and nothing after a further space counts.
func bearerToken(r *http.Request) (string, bool) {
	parts := strings.SplitN(strings.TrimSpace(r.Header.Get("Authorization")), " ", 3)
	if len(parts) < 2 || !strings.EqualFold(parts[0], "bearer") || parts[1] == "" {
		return "", false
	}
	return parts[1], true
}

// authenticate returns the request's user. It fails with errRefused, or
// the API server's reason, for a token refused or missing (a 401), and
// with a *reviewError when the API server could not be asked (a 401 too,
// as the API server answers when its webhook fails). The header goes once
// the token is accepted, so that nothing behind sees it.
func (t *tokenReviewer) authenticate(r *http.Request) (*user, error) {
	token, ok := bearerToken(r)
	if !ok {
		return nil, errRefused
	}
	u, err := t.review(r.Context(), token)
	if err != nil {
		return nil, err
	}
	r.Header.Del("Authorization")
	return u, nil
}

// reviewError is a review the API server could not be asked for.
type reviewError struct{ err error }

func (e *reviewError) Error() string { return e.err.Error() }
func (e *reviewError) Unwrap() error { return e.err }

func (t *tokenReviewer) review(ctx context.Context, token string) (*user, error) {
	key := sha256.Sum256([]byte(token))
	if v, ok := t.cache.Get(key); ok {
		if a := v.(tokenAnswer); a.user != nil {
			return a.user, nil
		}
		return nil, errRefused
	}

	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	// No audiences: the token must be meant for the API server itself.
	req := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}
	var res *authenticationv1.TokenReview
	err := withRetry(ctx, func(ctx context.Context) (err error) {
		res, err = t.client.Create(ctx, req, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return nil, &reviewError{fmt.Errorf("token review: %w", err)}
	}

	st := res.Status
	if !st.Authenticated {
		// A refusal with a reason may be the API server's own trouble
		// (an authentication webhook of its that failed): it is not
		// kept, as k8s.io/apiserver does not keep it.
		if st.Error != "" {
			return nil, errors.New(st.Error)
		}
		t.cache.Add(key, tokenAnswer{}, tokenCacheTTL)
		return nil, errRefused
	}
	u := &user{name: st.User.Username, uid: st.User.UID, groups: withAuthenticated(st.User.Username, st.User.Groups), extra: st.User.Extra}
	t.cache.Add(key, tokenAnswer{user: u}, tokenCacheTTL)
	return u, nil
}

// withAuthenticated adds system:authenticated to a user's groups, as the
// API server's authentication chain does (group.AuthenticatedGroupAdder),
// so that RBAC rules bound to it apply.
func withAuthenticated(name string, groups []string) []string {
	const authenticated, unauthenticated = "system:authenticated", "system:unauthenticated"
	if name == "system:anonymous" || slices.Contains(groups, authenticated) || slices.Contains(groups, unauthenticated) {
		return groups
	}
	return append(slices.Clip(groups), authenticated)
}
