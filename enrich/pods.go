package enrich

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

const (
	// watchErrorRelog is how often the same list or watch error is logged
	// again while it lasts.
	watchErrorRelog = 5 * time.Minute
)

// Pod is what the agent knows of a pod on this node.
type Pod struct {
	UID            string
	Namespace      string
	Name           string
	ServiceAccount string            // spec.serviceAccountName ("default" when empty, as the API server defaults it)
	Labels         map[string]string // shared, never modified after publication
	// Workload is "Deployment/billing", "StatefulSet/db", "DaemonSet/agent",
	// "Job/x", "CronJob/x", "ReplicaSet/x" (a ReplicaSet with no Deployment
	// owner), "<Kind>/<name>" for any other controller, and "" for a bare pod.
	Workload string
}

// PodIndex follows the pods of one node through an informer and answers
// lookups by pod UID. A nil *PodIndex is an empty index, so callers can
// hold one whether or not Kubernetes enrichment is on.
type PodIndex struct {
	client kubernetes.Interface
	node   string
	log    *slog.Logger

	// Published pods are replaced, never mutated: Lookup hands out the
	// pointer without copying.
	mu   sync.RWMutex
	pods map[string]*Pod

	// Owner resolution state. The informer calls handlers from one
	// goroutine, but the lock keeps that an optimisation, not a rule.
	ownMu   sync.Mutex
	owners  map[ownerKey]ownerEntry
	ownerOf map[string]ownerKey // pod UID -> the ReplicaSet or Job it counts against
	refs    map[ownerKey]int    // pods in the index per owner; an owner at 0 leaves the cache

	// Forbidden owner GETs are logged once per resource, not per pod.
	rsForbidden, jobForbidden atomic.Bool

	started atomic.Bool
	synced  atomic.Pointer[func() bool]
	lastErr atomic.Pointer[watchErr]
}

// watchErr is the last error of the pod informer's list or watch, and when
// it was last logged.
type watchErr struct {
	err    error
	logged time.Time
}

// NewPodIndex returns an index of the pods on nodeName; it is empty until
// Start. A nil log logs nothing.
func NewPodIndex(client kubernetes.Interface, nodeName string, log *slog.Logger) *PodIndex {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PodIndex{
		client:  client,
		node:    nodeName,
		log:     log.With("component", "enrich", "node", nodeName),
		pods:    make(map[string]*Pod),
		owners:  make(map[ownerKey]ownerEntry),
		ownerOf: make(map[string]ownerKey),
		refs:    make(map[ownerKey]int),
	}
}

// Start runs the informer until ctx is done and waits at most syncTimeout
// for the first full list of the node's pods. When that does not come in
// time it returns an error naming the cause, but the informer keeps
// trying in the background: Synced turns true once it gets through.
func (p *PodIndex) Start(ctx context.Context, syncTimeout time.Duration) error {
	if p.node == "" {
		// An empty spec.nodeName selects the pods not yet scheduled.
		return errors.New("pod index: node name not set")
	}
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("pod index already started")
	}
	// The field selector makes the API server send this node's pods only,
	// which is what bounds the index.
	selector := fields.OneTermEqualSelector("spec.nodeName", p.node).String()
	inf := coreinformers.NewFilteredPodInformer(p.client, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = selector })
	if err := inf.SetTransform(stripPod); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(p.watchError); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.upsert(ctx, obj) },
		UpdateFunc: func(_, obj any) { p.upsert(ctx, obj) },
		DeleteFunc: p.remove,
	})
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	// The registration's HasSynced, unlike the informer's, also waits for
	// our handler to have indexed the initial list.
	hasSynced := reg.HasSynced
	p.synced.Store(&hasSynced)

	// client-go logs through klog; the context carries our logger instead,
	// with its verbose levels below slog's Debug.
	runCtx := klog.NewContext(ctx, logr.FromSlogHandler(p.log.Handler()))
	go inf.RunWithContext(runCtx)

	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if cache.WaitForCacheSync(syncCtx.Done(), hasSynced) {
		p.log.Info("kubernetes pods synced", "pods", p.Len())
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pods of node %q not synced: %w", p.node, err)
	}
	var last error
	if w := p.lastErr.Load(); w != nil {
		last = w.err
	}
	switch {
	case last == nil:
		return fmt.Errorf("pods of node %q not synced within %s: no answer from the API server", p.node, syncTimeout)
	case apierrors.IsForbidden(last):
		return fmt.Errorf("cannot list pods of node %q: forbidden: the agent's service account needs list and watch on pods (core API group): %w", p.node, last)
	case apierrors.IsUnauthorized(last):
		return fmt.Errorf("cannot list pods of node %q: the API server rejected the agent's credentials: %w", p.node, last)
	default:
		return fmt.Errorf("pods of node %q not synced within %s: %w", p.node, syncTimeout, last)
	}
}

// watchError replaces client-go's default handler, which would log each
// failure through klog; here the error is kept for Start to report, and
// logged when it differs from the one before or every watchErrorRelog,
// since the informer retries the same failure with backoff for as long as
// it lasts.
func (p *PodIndex) watchError(ctx context.Context, _ *cache.Reflector, err error) {
	if ctx.Err() != nil || errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		// Shutdown, or the ordinary end of a watch: the informer relists.
		return
	}
	now := time.Now()
	prev := p.lastErr.Load()
	if prev != nil && prev.err.Error() == err.Error() && now.Sub(prev.logged) < watchErrorRelog {
		p.lastErr.Store(&watchErr{err: err, logged: prev.logged})
		return
	}
	p.lastErr.Store(&watchErr{err: err, logged: now})
	if apierrors.IsForbidden(err) {
		p.log.Warn("kubernetes pods not readable: grant list and watch on pods (core API group)", "err", err)
		return
	}
	p.log.Warn("kubernetes pod watch failed; retrying", "err", err)
}

// stripPod keeps what the index reads and drops the rest (spec, status,
// annotations, managed fields) before the informer stores the pod, so its
// copy of the node's pods costs little memory.
func stripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod.ManagedFields = nil
	pod.Annotations = nil
	pod.Spec = corev1.PodSpec{NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName}
	pod.Status = corev1.PodStatus{}
	return pod, nil
}

// Lookup returns the pod with that UID. It does not allocate.
func (p *PodIndex) Lookup(uid string) (*Pod, bool) {
	if p == nil {
		return nil, false
	}
	p.mu.RLock()
	pod, ok := p.pods[uid]
	p.mu.RUnlock()
	return pod, ok
}

// Synced reports whether the index holds the node's pods as of a full
// list from the API server.
func (p *PodIndex) Synced() bool {
	if p == nil {
		return false
	}
	f := p.synced.Load()
	return f != nil && (*f)()
}

// Len returns the number of pods indexed.
func (p *PodIndex) Len() int {
	if p == nil {
		return 0
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.pods)
}

func (p *PodIndex) upsert(ctx context.Context, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	uid := string(pod.UID)
	// The API server applies the field selector; this check is for
	// servers (and fakes) that do not.
	if pod.Spec.NodeName != p.node {
		p.evict(uid)
		return
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	workload, key := p.workload(ctx, pod)
	next := &Pod{
		UID:            uid,
		Namespace:      pod.Namespace,
		Name:           pod.Name,
		ServiceAccount: sa,
		Workload:       workload,
	}

	p.mu.Lock()
	prev := p.pods[uid]
	sameLabels := prev != nil && maps.Equal(prev.Labels, pod.Labels)
	if sameLabels {
		next.Labels = prev.Labels
	} else {
		// A copy, so that nothing the informer does to its objects can
		// reach a published Pod.
		next.Labels = maps.Clone(pod.Labels)
	}
	// Most updates are status changes that alter nothing we publish.
	if !sameLabels || prev.Namespace != next.Namespace || prev.Name != next.Name ||
		prev.ServiceAccount != next.ServiceAccount || prev.Workload != next.Workload {
		p.pods[uid] = next
	}
	p.mu.Unlock()

	p.track(uid, key)
}

func (p *PodIndex) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		p.evict(string(pod.UID))
	}
}

func (p *PodIndex) evict(uid string) {
	p.mu.Lock()
	_, had := p.pods[uid]
	delete(p.pods, uid)
	p.mu.Unlock()
	if had {
		p.track(uid, ownerKey{})
	}
}
