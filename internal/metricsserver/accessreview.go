package metricsserver

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	authorizationv1client "k8s.io/client-go/kubernetes/typed/authorization/v1"
)

// accessAnswer is a SubjectAccessReview's answer.
type accessAnswer struct {
	allowed, denied bool
	reason          string
}

// accessReviewer asks the API server whether a user may use a verb on a
// non-resource URL, keeping an answer for allowCacheTTL or denyCacheTTL
// under the SHA-256 of all that was asked.
type accessReviewer struct {
	client authorizationv1client.SubjectAccessReviewInterface
	cache  *cache.LRUExpireCache // [sha256.Size]byte → accessAnswer
}

func newAccessReviewer(client authorizationv1client.SubjectAccessReviewInterface, clock cache.Clock) *accessReviewer {
	return &accessReviewer{client: client, cache: cache.NewLRUExpireCacheWithClock(accessCacheSize, clock)}
}

// allowed reports whether u may verb path, with the authoriser's reason.
// An answer that both allows and denies is an error, as k8s.io/apiserver
// takes it.
func (a *accessReviewer) allowed(ctx context.Context, u *user, verb, path string) (bool, string, error) {
	ans, err := a.review(ctx, u, verb, path)
	if err != nil {
		return false, "", err
	}
	if ans.allowed && ans.denied {
		return false, ans.reason, errors.New("subject access review both allowed and denied the request")
	}
	return ans.allowed, ans.reason, nil
}

func (a *accessReviewer) review(ctx context.Context, u *user, verb, path string) (accessAnswer, error) {
	spec := authorizationv1.SubjectAccessReviewSpec{
		User:                  u.name,
		UID:                   u.uid,
		Groups:                u.groups,
		NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: verb},
	}
	if u.extra != nil {
		spec.Extra = make(map[string]authorizationv1.ExtraValue, len(u.extra))
		for k, v := range u.extra {
			spec.Extra[k] = authorizationv1.ExtraValue(v)
		}
	}
	// The key is the whole question: a change of groups or extra asks anew.
	b, err := json.Marshal(spec)
	if err != nil {
		return accessAnswer{}, fmt.Errorf("subject access review: %w", err)
	}
	key := sha256.Sum256(b)
	if v, ok := a.cache.Get(key); ok {
		return v.(accessAnswer), nil
	}

	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	req := &authorizationv1.SubjectAccessReview{Spec: spec}
	var res *authorizationv1.SubjectAccessReview
	err = withRetry(ctx, func(ctx context.Context) (err error) {
		res, err = a.client.Create(ctx, req, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return accessAnswer{}, fmt.Errorf("subject access review: %w", err)
	}
	ans := accessAnswer{allowed: res.Status.Allowed, denied: res.Status.Denied, reason: res.Status.Reason}
	ttl := denyCacheTTL
	if ans.allowed {
		ttl = allowCacheTTL
	}
	a.cache.Add(key, ans, ttl)
	return ans, nil
}
