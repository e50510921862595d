package enrich

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Environments knows which environment each namespace of the cluster is
// in: the value of one label of the namespace, such as environment=prod.
// A namespace without the label is in none.
type Environments struct {
	client kubernetes.Interface
	label  string
	log    *slog.Logger

	mu     sync.RWMutex
	values map[string]string // namespace to the label's value, labelled ones only
	synced func() bool
}

// NewEnvironments returns the environments by label; they are unknown
// until Start.
func NewEnvironments(client kubernetes.Interface, label string, log *slog.Logger) *Environments {
	return &Environments{client: client, label: label, log: log.With("component", "enrich", "label", label), values: map[string]string{}}
}

// Start watches the namespaces until ctx is done, and waits at most
// syncTimeout for their first list. When it does not come in time it
// returns an error, and the watch keeps trying: until it gets through,
// every namespace is in no environment.
func (e *Environments) Start(ctx context.Context, syncTimeout time.Duration) error {
	if e.label == "" {
		return errors.New("environments: no label")
	}
	inf := coreinformers.NewNamespaceInformer(e.client, 0, cache.Indexers{})
	// Only the label's value is read: drop the rest before it is stored.
	if err := inf.SetTransform(func(obj any) (any, error) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return obj, nil
		}
		slim := &corev1.Namespace{}
		slim.Name, slim.ResourceVersion = ns.Name, ns.ResourceVersion
		if v, ok := ns.Labels[e.label]; ok {
			slim.Labels = map[string]string{e.label: v}
		}
		return slim, nil
	}); err != nil {
		return fmt.Errorf("namespace informer: %w", err)
	}
	var lastErr error
	var errMu sync.Mutex
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		if ctx.Err() != nil || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			return
		}
		errMu.Lock()
		repeated := lastErr != nil && lastErr.Error() == err.Error()
		lastErr = err
		errMu.Unlock()
		if !repeated {
			e.log.Warn("kubernetes namespaces not readable; calls between namespaces carry no cross_environment finding meanwhile", "err", err)
		}
	}); err != nil {
		return fmt.Errorf("namespace informer: %w", err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    e.upsert,
		UpdateFunc: func(_, obj any) { e.upsert(obj) },
		DeleteFunc: e.remove,
	})
	if err != nil {
		return fmt.Errorf("namespace informer: %w", err)
	}
	e.mu.Lock()
	e.synced = reg.HasSynced
	e.mu.Unlock()
	go inf.RunWithContext(klog.NewContext(ctx, logr.FromSlogHandler(e.log.Handler())))

	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if cache.WaitForCacheSync(syncCtx.Done(), reg.HasSynced) {
		e.log.Info("kubernetes namespaces synced", "labelled", e.Len())
		return nil
	}
	errMu.Lock()
	defer errMu.Unlock()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case apierrors.IsForbidden(lastErr):
		return fmt.Errorf("cannot list namespaces: the agent's service account needs list and watch on namespaces (core API group): %w", lastErr)
	case lastErr != nil:
		return fmt.Errorf("namespaces not synced within %s: %w", syncTimeout, lastErr)
	default:
		return fmt.Errorf("namespaces not synced within %s: no answer from the API server", syncTimeout)
	}
}

func (e *Environments) upsert(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	v, labelled := ns.Labels[e.label]
	e.mu.Lock()
	if labelled {
		e.values[ns.Name] = v
	} else {
		delete(e.values, ns.Name)
	}
	e.mu.Unlock()
}

func (e *Environments) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if ns, ok := obj.(*corev1.Namespace); ok {
		e.mu.Lock()
		delete(e.values, ns.Name)
		e.mu.Unlock()
	}
}

// Of returns the environment of a namespace, and whether it has one. It
// does not allocate.
func (e *Environments) Of(namespace string) (string, bool) {
	if e == nil {
		return "", false
	}
	e.mu.RLock()
	v, ok := e.values[namespace]
	e.mu.RUnlock()
	return v, ok
}

// Len returns the number of namespaces in an environment.
func (e *Environments) Len() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.values)
}

// Synced reports whether the namespaces have been listed.
func (e *Environments) Synced() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.synced != nil && e.synced()
}
