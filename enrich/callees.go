package enrich

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// CalleeIndex names the destinations of in-cluster calls. It follows the
// cluster's Services (their cluster IPs), EndpointSlices (the addresses
// behind each Service) and pods (their IPs) through three cluster-wide
// informers, and answers lookups by address.
//
// Each informer keeps a reduced copy of its objects (the few fields read
// here, see calleePod, calleeService, calleeSlice), so that the index of a
// cluster of 100,000 pods stays small. Published Callees are never
// changed: a change builds a new one, so Lookup hands out the pointer
// without copying.
//
// A nil *CalleeIndex is an empty index.
type CalleeIndex struct {
	client      kubernetes.Interface
	trustDomain string
	log         *slog.Logger

	// mu guards the maps. Readers hold it for one map lookup; writers (the
	// informers' handlers) for the update of one object's addresses.
	mu sync.RWMutex
	// Cluster IPs name a Service only.
	svc4 map[[4]byte]*Callee
	svc6 map[[16]byte]*Callee
	// Pod IPs and endpoint addresses.
	ep4 map[[4]byte]*calleeEntry
	ep6 map[[16]byte]*calleeEntry
	// shared lists the EndpointSlices of addresses that more than one
	// names (a pod behind several Services). Writers only.
	shared map[netip.Addr][]*calleeSlice
	// hostIPs counts the running host-network pods of each address: a
	// node's. An endpoint there (of a Service of host-network pods) is
	// kept in hidden, not published: the address is the node's, for
	// whatever listens on it. Writers only.
	hostIPs map[netip.Addr]int
	hidden  map[netip.Addr]*calleeEntry

	started     atomic.Bool
	synced      atomic.Bool
	watchErrors atomic.Uint64
	lastErr     [numCalleeSources]atomic.Pointer[watchErr]
}

// The resources the index follows, in the order of CalleeStats.WatchErrors.
const (
	calleeServices = iota
	calleeSlices
	calleePods
	numCalleeSources
)

var calleeResources = [numCalleeSources]struct{ resource, group string }{
	{"services", ""}, {"endpointslices", "discovery.k8s.io"}, {"pods", ""},
}

// calleeEntry is what is known of one pod IP or endpoint address. Entries
// are replaced, never changed, once in the map.
type calleeEntry struct {
	Callee
	pod *calleePod // the pod whose status has the address; nil when none is known
	// slice is an EndpointSlice that names the address; nil when none
	// does. The few addresses that several name have them all in
	// CalleeIndex.shared instead.
	slice *calleeSlice
}

// CalleeStats are the index's own counts.
type CalleeStats struct {
	// Addresses are the cluster IPs, pod IPs and endpoint addresses indexed.
	Addresses int
	// WatchErrors counts failed lists and watches of the three informers.
	WatchErrors uint64
	// Synced is true once all three informers have listed their objects.
	Synced bool
}

// NewCalleeIndex returns an index that is empty until Start. trustDomain
// names pod identities ("cluster.local" when empty). A nil log logs
// nothing.
func NewCalleeIndex(client kubernetes.Interface, trustDomain string, log *slog.Logger) *CalleeIndex {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if trustDomain == "" {
		trustDomain = "cluster.local"
	}
	return &CalleeIndex{
		client:      client,
		trustDomain: trustDomain,
		log:         log.With("component", "enrich"),
		svc4:        make(map[[4]byte]*Callee),
		svc6:        make(map[[16]byte]*Callee),
		ep4:         make(map[[4]byte]*calleeEntry),
		ep6:         make(map[[16]byte]*calleeEntry),
		shared:      make(map[netip.Addr][]*calleeSlice),
		hostIPs:     make(map[netip.Addr]int),
		hidden:      make(map[netip.Addr]*calleeEntry),
	}
}

// Lookup returns what the cluster says of addr. It does not allocate. An
// address not (yet) known is not found: nothing is guessed.
func (x *CalleeIndex) Lookup(addr netip.Addr) (*Callee, bool) {
	if x == nil {
		return nil, false
	}
	addr = addr.Unmap()
	x.mu.RLock()
	defer x.mu.RUnlock()
	if addr.Is4() {
		k := addr.As4()
		if c, ok := x.svc4[k]; ok {
			return c, true
		}
		if e, ok := x.ep4[k]; ok {
			return &e.Callee, true
		}
		return nil, false
	}
	if !addr.Is6() {
		return nil, false
	}
	k := addr.As16()
	if c, ok := x.svc6[k]; ok {
		return c, true
	}
	if e, ok := x.ep6[k]; ok {
		return &e.Callee, true
	}
	return nil, false
}

// Synced reports whether all three informers have listed their objects.
func (x *CalleeIndex) Synced() bool { return x != nil && x.synced.Load() }

// Stats returns the index's counts.
func (x *CalleeIndex) Stats() CalleeStats {
	if x == nil {
		return CalleeStats{}
	}
	x.mu.RLock()
	n := len(x.svc4) + len(x.svc6) + len(x.ep4) + len(x.ep6)
	x.mu.RUnlock()
	return CalleeStats{Addresses: n, WatchErrors: x.watchErrors.Load(), Synced: x.synced.Load()}
}

// Start runs the informers until ctx is done and waits at most
// syncTimeout for their first full lists. When those do not come in time
// it returns an error naming the cause, but the informers keep trying in
// the background: Synced turns true once all three got through.
func (x *CalleeIndex) Start(ctx context.Context, syncTimeout time.Duration) error {
	if !x.started.CompareAndSwap(false, true) {
		return errors.New("callee index already started")
	}
	none := func(*metav1.ListOptions) {}
	infs := [numCalleeSources]cache.SharedIndexInformer{
		calleeServices: coreinformers.NewFilteredServiceInformer(x.client, metav1.NamespaceAll, 0, cache.Indexers{}, none),
		calleeSlices:   discoveryinformers.NewFilteredEndpointSliceInformer(x.client, metav1.NamespaceAll, 0, cache.Indexers{}, none),
		calleePods:     coreinformers.NewFilteredPodInformer(x.client, metav1.NamespaceAll, 0, cache.Indexers{}, none),
	}
	transforms := [numCalleeSources]cache.TransformFunc{slimService, slimSlice, slimPod}
	handlers := [numCalleeSources]cache.ResourceEventHandlerFuncs{
		calleeServices: {AddFunc: x.addService, UpdateFunc: x.updateService, DeleteFunc: x.deleteService},
		calleeSlices:   {AddFunc: x.addSlice, UpdateFunc: x.updateSlice, DeleteFunc: x.deleteSlice},
		calleePods:     {AddFunc: x.addPod, UpdateFunc: x.updatePod, DeleteFunc: x.deletePod},
	}
	var synced [numCalleeSources]cache.InformerSynced
	runCtx := klog.NewContext(ctx, logr.FromSlogHandler(x.log.Handler()))
	for i, inf := range infs {
		if err := inf.SetTransform(transforms[i]); err != nil {
			return fmt.Errorf("%s informer: %w", calleeResources[i].resource, err)
		}
		if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
			x.watchError(ctx, i, err)
		}); err != nil {
			return fmt.Errorf("%s informer: %w", calleeResources[i].resource, err)
		}
		reg, err := inf.AddEventHandler(handlers[i])
		if err != nil {
			return fmt.Errorf("%s informer: %w", calleeResources[i].resource, err)
		}
		// The registration's HasSynced also waits for the handler to have
		// indexed the initial list.
		synced[i] = reg.HasSynced
	}
	for _, inf := range infs {
		go inf.RunWithContext(runCtx)
	}
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced[:]...) {
			x.synced.Store(true)
		}
	}()

	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if cache.WaitForCacheSync(syncCtx.Done(), synced[:]...) {
		x.synced.Store(true)
		x.log.Info("kubernetes callees synced", "addresses", x.Stats().Addresses)
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("callee index not synced: %w", err)
	}
	for i, s := range synced {
		if s() {
			continue
		}
		r := calleeResources[i]
		var last error
		if w := x.lastErr[i].Load(); w != nil {
			last = w.err
		}
		switch {
		case last == nil:
			return fmt.Errorf("%s not synced within %s: no answer from the API server", r.resource, syncTimeout)
		case apierrors.IsForbidden(last):
			return fmt.Errorf("cannot list %s: forbidden: the agent's service account needs list and watch on %s (API group %q) cluster-wide: %w",
				r.resource, r.resource, r.group, last)
		case apierrors.IsUnauthorized(last):
			return fmt.Errorf("cannot list %s: the API server rejected the agent's credentials: %w", r.resource, last)
		default:
			return fmt.Errorf("%s not synced within %s: %w", r.resource, syncTimeout, last)
		}
	}
	return fmt.Errorf("callees not synced within %s", syncTimeout)
}

// watchError counts every failed list or watch, and logs one when it
// differs from the one before or every watchErrorRelog, since an informer
// retries the same failure with backoff for as long as it lasts.
func (x *CalleeIndex) watchError(ctx context.Context, src int, err error) {
	if ctx.Err() != nil || errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		// Shutdown, or the ordinary end of a watch: the informer relists.
		return
	}
	x.watchErrors.Add(1)
	now := time.Now()
	prev := x.lastErr[src].Load()
	if prev != nil && prev.err.Error() == err.Error() && now.Sub(prev.logged) < watchErrorRelog {
		x.lastErr[src].Store(&watchErr{err: err, logged: prev.logged})
		return
	}
	x.lastErr[src].Store(&watchErr{err: err, logged: now})
	r := calleeResources[src]
	if apierrors.IsForbidden(err) {
		x.log.Warn("kubernetes "+r.resource+" not readable, callees go unnamed: grant list and watch on "+r.resource+" cluster-wide",
			"resource", r.resource, "group", r.group, "err", err)
		return
	}
	x.log.Warn("kubernetes "+r.resource+" watch failed; retrying", "resource", r.resource, "err", err)
}

// objMeta is the little of an object's metadata that the informers need:
// its key, and its resource version to tell an update from a resync.
type objMeta struct {
	namespace unique.Handle[string]
	name      string
	// rv is the resource version: the number etcd gives it, or, from a
	// server whose versions are not numbers, a hash of it. Only its
	// equality is ever read.
	rv uint64
}

func newObjMeta(m *metav1.ObjectMeta) objMeta {
	rv, err := strconv.ParseUint(m.ResourceVersion, 10, 64)
	if err != nil {
		h := fnv.New64a()
		h.Write([]byte(m.ResourceVersion))
		rv = h.Sum64()
	}
	return objMeta{namespace: unique.Make(m.Namespace), name: m.Name, rv: rv}
}

// GetObjectMeta lets client-go's key functions and informers read the
// reduced objects as they read API objects.
func (m *objMeta) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: m.namespace.Value(), Name: m.name, ResourceVersion: strconv.FormatUint(m.rv, 10)}
}

// calleePod is what the index keeps of a pod. ips is empty for a pod that
// has ended (its IPs go to new pods). A host-network pod has its IPs (its
// node's) and no service account: it is never indexed, its IPs only hide
// endpoints there.
type calleePod struct {
	objMeta
	serviceAccount, workload unique.Handle[string]
	ips                      [2]netip.Addr // status.podIPs: one per family at most
}

// hostNetwork tells a host-network pod, which has IPs but no service
// account (the field would cost every pod 16 bytes).
func (p *calleePod) hostNetwork() bool {
	return p.ips[0].IsValid() && p.serviceAccount == unique.Handle[string]{}
}

// calleeService is what the index keeps of a Service: its cluster IPs.
type calleeService struct {
	objMeta
	ips [2]netip.Addr
}

// calleeSlice is what the index keeps of an EndpointSlice: the Service it
// belongs to and its addresses.
type calleeSlice struct {
	objMeta
	service   unique.Handle[string]
	endpoints []calleeEndpoint
}

type calleeEndpoint struct {
	addr netip.Addr
	pod  string // targetRef's name when it is a pod of the slice's namespace; "" otherwise
}

func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p := &calleePod{objMeta: newObjMeta(&pod.ObjectMeta)}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return p, nil
	}
	n := 0
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil || n == len(p.ips) {
			return
		}
		a = a.Unmap()
		if slices.Contains(p.ips[:n], a) {
			return
		}
		p.ips[n] = a
		n++
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if n == 0 && pod.Status.PodIP != "" {
		add(pod.Status.PodIP)
	}
	if n == 0 || pod.Spec.HostNetwork {
		return p, nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	p.serviceAccount = unique.Make(sa)
	p.workload = unique.Make(calleeWorkload(pod))
	return p, nil
}

// calleeWorkload names a pod's workload from its owner references alone:
// the callee index follows every pod of the cluster, too many for a GET
// of each owner. A ReplicaSet whose name is the pod-template-hash label
// after its Deployment's name is that Deployment's, as the Deployment
// controller names them; a Job stays a Job (a CronJob's Jobs are named
// after it with a number, but so may any Job be). The format is the
// caller's (Pod.Workload).
func calleeWorkload(pod *corev1.Pod) string {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return ""
	}
	if ref.Kind == "ReplicaSet" && apiGroup(ref.APIVersion) == "apps" {
		return replicaSetFallback(ref.Name, pod.Labels)
	}
	return ref.Kind + "/" + ref.Name
}

func slimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	s := &calleeService{objMeta: newObjMeta(&svc.ObjectMeta)}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	n := 0
	for _, ip := range ips {
		// "None" (a headless Service) does not parse.
		if a, err := netip.ParseAddr(ip); err == nil && n < len(s.ips) {
			s.ips[n] = a.Unmap()
			n++
		}
	}
	return s, nil
}

func slimSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	s := &calleeSlice{objMeta: newObjMeta(&es.ObjectMeta)}
	svc := es.Labels[discoveryv1.LabelServiceName]
	if svc == "" || (es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6) {
		// A slice of no Service names nothing; FQDN endpoints have no address.
		return s, nil
	}
	s.service = unique.Make(svc)
	n := 0
	for i := range es.Endpoints {
		n += len(es.Endpoints[i].Addresses)
	}
	s.endpoints = make([]calleeEndpoint, 0, n)
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		var pod string
		if r := ep.TargetRef; r != nil && r.Kind == "Pod" && (r.Namespace == "" || r.Namespace == es.Namespace) {
			pod = r.Name
		}
		for _, ip := range ep.Addresses {
			if a, err := netip.ParseAddr(ip); err == nil {
				s.endpoints = append(s.endpoints, calleeEndpoint{addr: a.Unmap(), pod: pod})
			}
		}
	}
	return s, nil
}

// tombstone unwraps the object of a deletion the informer missed.
func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func (x *CalleeIndex) addService(obj any) { x.updateService(nil, obj) }

func (x *CalleeIndex) updateService(oldObj, obj any) {
	old, _ := oldObj.(*calleeService)
	svc, ok := obj.(*calleeService)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if old != nil {
		x.dropService(old)
	}
	var c *Callee
	for _, a := range svc.ips {
		if !a.IsValid() {
			continue
		}
		if c == nil {
			c = &Callee{Namespace: svc.namespace.Value(), Service: svc.name}
		}
		if a.Is4() {
			x.svc4[a.As4()] = c
		} else {
			x.svc6[a.As16()] = c
		}
	}
}

func (x *CalleeIndex) deleteService(obj any) {
	if svc, ok := tombstone(obj).(*calleeService); ok {
		x.mu.Lock()
		x.dropService(svc)
		x.mu.Unlock()
	}
}

// dropService removes svc's cluster IPs, unless another Service holds one
// now (the API server gave it away between the delete and its event).
func (x *CalleeIndex) dropService(svc *calleeService) {
	ns := svc.namespace.Value()
	for _, a := range svc.ips {
		switch {
		case !a.IsValid():
		case a.Is4():
			if c := x.svc4[a.As4()]; c != nil && c.Namespace == ns && c.Service == svc.name {
				delete(x.svc4, a.As4())
			}
		default:
			if c := x.svc6[a.As16()]; c != nil && c.Namespace == ns && c.Service == svc.name {
				delete(x.svc6, a.As16())
			}
		}
	}
}

func (x *CalleeIndex) addPod(obj any) { x.updatePod(nil, obj) }

func (x *CalleeIndex) updatePod(oldObj, obj any) {
	old, _ := oldObj.(*calleePod)
	pod, ok := obj.(*calleePod)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if pod.hostNetwork() {
		x.hostRefs(pod, 1)
	}
	if old != nil && old.hostNetwork() {
		x.hostRefs(old, -1)
	}
	if old != nil && !old.hostNetwork() {
		for _, a := range old.ips {
			if a.IsValid() && (pod.hostNetwork() || !slices.Contains(pod.ips[:], a)) {
				x.setPod(a, old, nil)
			}
		}
	}
	if pod.hostNetwork() {
		return
	}
	for _, a := range pod.ips {
		if a.IsValid() {
			x.setPod(a, old, pod)
		}
	}
}

// hostRefs counts (d = 1) or lets go of (d = -1) the addresses of a
// host-network pod, hiding or showing the endpoints there.
func (x *CalleeIndex) hostRefs(pod *calleePod, d int) {
	for _, a := range pod.ips {
		if !a.IsValid() {
			continue
		}
		n := x.hostIPs[a] + d
		if n > 0 {
			x.hostIPs[a] = n
		} else {
			delete(x.hostIPs, a)
		}
		if (n > 0) == (n-d > 0) {
			continue
		}
		e := x.entry(a)
		x.unpublish(a)
		if e != nil {
			x.publish(a, e)
		}
	}
}

func (x *CalleeIndex) deletePod(obj any) {
	if pod, ok := tombstone(obj).(*calleePod); ok {
		x.mu.Lock()
		if pod.hostNetwork() {
			x.hostRefs(pod, -1)
			x.mu.Unlock()
			return
		}
		for _, a := range pod.ips {
			if a.IsValid() {
				x.setPod(a, pod, nil)
			}
		}
		x.mu.Unlock()
	}
}

// setPod makes pod the one with address a, in place of old (or of
// whichever pod had it, when old is nil); a nil pod removes old from a. A
// removal leaves a newer pod that has the address alone.
func (x *CalleeIndex) setPod(a netip.Addr, old, pod *calleePod) {
	e := x.entry(a)
	var cur *calleePod
	if e != nil {
		cur = e.pod
	}
	if pod == nil && (cur == nil || !sameObject(&cur.objMeta, &old.objMeta)) {
		return
	}
	x.store(a, pod, x.namers(a, e))
}

func sameObject(a, b *objMeta) bool { return a.namespace == b.namespace && a.name == b.name }

func (x *CalleeIndex) addSlice(obj any) { x.updateSlice(nil, obj) }

func (x *CalleeIndex) updateSlice(oldObj, obj any) {
	old, _ := oldObj.(*calleeSlice)
	s, ok := obj.(*calleeSlice)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if old != nil {
		for i := range old.endpoints {
			x.unlinkSlice(old.endpoints[i].addr, old)
		}
	}
	for i := range s.endpoints {
		x.linkSlice(s.endpoints[i].addr, s)
	}
}

func (x *CalleeIndex) deleteSlice(obj any) {
	if s, ok := tombstone(obj).(*calleeSlice); ok {
		x.mu.Lock()
		for i := range s.endpoints {
			x.unlinkSlice(s.endpoints[i].addr, s)
		}
		x.mu.Unlock()
	}
}

// linkSlice adds s (or replaces the previous version of s) to the slices
// naming a.
func (x *CalleeIndex) linkSlice(a netip.Addr, s *calleeSlice) {
	var pod *calleePod
	var list []*calleeSlice
	if e := x.entry(a); e != nil {
		pod = e.pod
		for _, o := range x.namers(a, e) {
			if o == s {
				return // named twice in one slice
			}
			if !sameObject(&o.objMeta, &s.objMeta) {
				list = append(list, o)
			}
		}
	}
	x.store(a, pod, append(list, s))
}

func (x *CalleeIndex) unlinkSlice(a netip.Addr, s *calleeSlice) {
	e := x.entry(a)
	if e == nil {
		return
	}
	list := x.namers(a, e)
	i := slices.IndexFunc(list, func(o *calleeSlice) bool { return sameObject(&o.objMeta, &s.objMeta) })
	if i < 0 {
		return
	}
	x.store(a, e.pod, slices.Delete(list, i, i+1))
}

// namers returns a new list of the EndpointSlices naming a, whose entry
// is e.
func (x *CalleeIndex) namers(a netip.Addr, e *calleeEntry) []*calleeSlice {
	switch {
	case e == nil || e.slice == nil:
		return nil
	case len(x.shared[a]) > 0:
		return slices.Clone(x.shared[a])
	default:
		return []*calleeSlice{e.slice}
	}
}

func (x *CalleeIndex) entry(a netip.Addr) *calleeEntry {
	if e := x.hidden[a]; e != nil {
		return e
	}
	if a.Is4() {
		return x.ep4[a.As4()]
	}
	return x.ep6[a.As16()]
}

// publish makes e what Lookup answers for a, unless a is a node's.
func (x *CalleeIndex) publish(a netip.Addr, e *calleeEntry) {
	switch {
	case x.hostIPs[a] > 0:
		x.hidden[a] = e
	case a.Is4():
		x.ep4[a.As4()] = e
	default:
		x.ep6[a.As16()] = e
	}
}

func (x *CalleeIndex) unpublish(a netip.Addr) {
	delete(x.hidden, a)
	if a.Is4() {
		delete(x.ep4, a.As4())
	} else {
		delete(x.ep6, a.As16())
	}
}

// store publishes a new entry for a, or removes a when nothing names it.
func (x *CalleeIndex) store(a netip.Addr, pod *calleePod, list []*calleeSlice) {
	if len(list) > 1 {
		x.shared[a] = list
	} else {
		delete(x.shared, a)
	}
	if pod == nil && len(list) == 0 {
		x.unpublish(a)
		return
	}
	e := &calleeEntry{pod: pod}
	if len(list) > 0 {
		e.slice = list[0]
	}
	e.Callee = x.callee(a, pod, list)
	x.publish(a, e)
}

// callee combines what the pod with address a and the EndpointSlices
// naming a say of it. A slice whose endpoint names another pod than the
// one that has the address now is out of date (the address went to a new
// pod) and gives nothing. Of several Services, the one first by name
// (in the pod's namespace) is named.
func (x *CalleeIndex) callee(a netip.Addr, pod *calleePod, list []*calleeSlice) Callee {
	var c Callee
	if pod != nil {
		ns, sa := pod.namespace.Value(), pod.serviceAccount.Value()
		c = Callee{Namespace: ns, Pod: pod.name, ServiceAccount: sa, Workload: pod.workload.Value(),
			Identity: unique.Make(SpiffeID(x.trustDomain, ns, sa)).Value()}
	}
	var best *calleeSlice
	var bestPod string
	for _, s := range list {
		epPod := s.podOf(a, pod)
		if pod != nil && (s.namespace != pod.namespace || (epPod != "" && epPod != pod.name)) {
			continue
		}
		if best == nil || cmp.Or(cmp.Compare(s.namespace.Value(), best.namespace.Value()),
			cmp.Compare(s.service.Value(), best.service.Value())) < 0 {
			best, bestPod = s, epPod
		}
	}
	if best != nil {
		c.Service = best.service.Value()
		if pod == nil {
			c.Namespace, c.Pod = best.namespace.Value(), bestPod
		}
	}
	return c
}

// podOf is the pod name of s's endpoint with address a. When the index
// knows that pod, the endpoint keeps the pod's copy of the name, so that
// one copy serves both.
func (s *calleeSlice) podOf(a netip.Addr, pod *calleePod) string {
	for i := range s.endpoints {
		ep := &s.endpoints[i]
		if ep.addr != a {
			continue
		}
		if pod != nil && ep.pod == pod.name {
			ep.pod = pod.name
		}
		return ep.pod
	}
	return ""
}
