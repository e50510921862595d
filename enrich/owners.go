// Owner resolution: the workload above a pod's ReplicaSet or Job, read
// with one GET per owner and cached while pods of it are in the index.

package enrich

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

const (
	// ownerGetTimeout bounds one GET of a ReplicaSet or Job. The GETs run
	// on the informer's handler goroutine, so a slow API server delays
	// later pod updates by at most this much per owner not yet cached.
	ownerGetTimeout = 2 * time.Second
	// ownerRetry is how long a failed owner GET stands before the next
	// pod update of that owner tries again: often enough to pick up an
	// RBAC fix, rarely enough not to send a GET per pod update.
	ownerRetry = time.Minute
)

// ownerKind names the owners that need a GET to find the workload above them.
type ownerKind uint8

const (
	ownerReplicaSet ownerKind = iota + 1
	ownerJob
)

type ownerKey struct {
	kind      ownerKind
	namespace string
	name      string
}

type ownerEntry struct {
	// workload is the answer of a GET that succeeded; "" with retryAt set
	// means the GET failed and pods fall back to what their own metadata
	// says until retryAt.
	workload string
	retryAt  time.Time
}

// track records which cached owner the pod counts against, and drops an
// owner from the cache when its last pod leaves the index: the cache is
// then bounded by the pods on the node.
func (p *PodIndex) track(uid string, key ownerKey) {
	p.ownMu.Lock()
	defer p.ownMu.Unlock()
	old, had := p.ownerOf[uid]
	if had && old == key {
		return
	}
	if had {
		delete(p.ownerOf, uid)
		if p.refs[old]--; p.refs[old] <= 0 {
			delete(p.refs, old)
			delete(p.owners, old)
		}
	}
	if key != (ownerKey{}) {
		p.ownerOf[uid] = key
		p.refs[key]++
	}
}

// workload names the pod's workload from its controller, and returns the
// owner key when the answer came through the owner cache.
func (p *PodIndex) workload(ctx context.Context, pod *corev1.Pod) (string, ownerKey) {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return "", ownerKey{}
	}
	group := apiGroup(ref.APIVersion)
	switch {
	case ref.Kind == "ReplicaSet" && group == "apps":
		key := ownerKey{ownerReplicaSet, pod.Namespace, ref.Name}
		if w, ok := p.resolveOwner(ctx, key); ok {
			return w, key
		}
		return replicaSetFallback(ref.Name, pod.Labels), key
	case ref.Kind == "Job" && group == "batch":
		key := ownerKey{ownerJob, pod.Namespace, ref.Name}
		if w, ok := p.resolveOwner(ctx, key); ok {
			return w, key
		}
		return "Job/" + ref.Name, key
	default:
		return ref.Kind + "/" + ref.Name, ownerKey{}
	}
}

func apiGroup(apiVersion string) string {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return ""
	}
	return gv.Group
}

// replicaSetFallback guesses a ReplicaSet's Deployment from names alone:
// the Deployment controller names its ReplicaSets "<deployment>-<hash>"
// and labels their pods pod-template-hash=<hash>.
func replicaSetFallback(rs string, labels map[string]string) string {
	if h := labels["pod-template-hash"]; h != "" {
		if d, ok := strings.CutSuffix(rs, "-"+h); ok && d != "" {
			return "Deployment/" + d
		}
	}
	return "ReplicaSet/" + rs
}

// resolveOwner answers from the cache, or GETs the owner. ok is false when
// the GET failed (now or within ownerRetry): the caller falls back to what
// the pod's own metadata says.
func (p *PodIndex) resolveOwner(ctx context.Context, key ownerKey) (string, bool) {
	p.ownMu.Lock()
	e, hit := p.owners[key]
	p.ownMu.Unlock()
	if hit && e.retryAt.IsZero() {
		return e.workload, true
	}
	if hit && time.Now().Before(e.retryAt) {
		return "", false
	}

	gctx, cancel := context.WithTimeout(ctx, ownerGetTimeout)
	w, err := p.getOwner(gctx, key)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			// Shutting down: not worth a log line or a cache entry.
			return "", false
		}
		p.ownerError(key, err)
		e = ownerEntry{retryAt: time.Now().Add(ownerRetry)}
	} else {
		e = ownerEntry{workload: w}
	}
	p.ownMu.Lock()
	p.owners[key] = e
	p.ownMu.Unlock()
	return w, err == nil
}

func (p *PodIndex) getOwner(ctx context.Context, key ownerKey) (string, error) {
	switch key.kind {
	case ownerReplicaSet:
		rs, err := p.client.AppsV1().ReplicaSets(key.namespace).Get(ctx, key.name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if ref := metav1.GetControllerOfNoCopy(rs); ref != nil && ref.Kind == "Deployment" && apiGroup(ref.APIVersion) == "apps" {
			return "Deployment/" + ref.Name, nil
		}
		return "ReplicaSet/" + key.name, nil
	case ownerJob:
		job, err := p.client.BatchV1().Jobs(key.namespace).Get(ctx, key.name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if ref := metav1.GetControllerOfNoCopy(job); ref != nil && ref.Kind == "CronJob" && apiGroup(ref.APIVersion) == "batch" {
			return "CronJob/" + ref.Name, nil
		}
		return "Job/" + key.name, nil
	}
	return "", fmt.Errorf("unknown owner kind %d", key.kind)
}

func (p *PodIndex) ownerError(key ownerKey, err error) {
	resource, group, once := "replicasets", "apps", &p.rsForbidden
	if key.kind == ownerJob {
		resource, group, once = "jobs", "batch", &p.jobForbidden
	}
	switch {
	case apierrors.IsForbidden(err):
		if once.CompareAndSwap(false, true) {
			p.log.Warn("cannot read pod owners, workloads are guessed from names: grant get on "+resource+" in API group "+group,
				"resource", resource, "group", group, "err", err)
		}
	case apierrors.IsNotFound(err):
		// The owner was deleted and its pods are going too.
		p.log.Debug("pod owner gone", "resource", resource, "namespace", key.namespace, "name", key.name)
	default:
		p.log.Warn("cannot read pod owner, workload guessed from names",
			"resource", resource, "namespace", key.namespace, "name", key.name, "err", err)
	}
}
