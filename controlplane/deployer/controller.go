package deployer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"istio.io/api/label"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appsv1listers "k8s.io/client-go/listers/apps/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// Options configure a Controller.
type Options struct {
	// Image of the waypoint's container (zmeshd's --waypoint-image).
	// Required. Its entrypoint need not be the waypoint: the container runs
	// the command "waypoint".
	Image string
	// ImagePullPolicy of that container; the cluster's default if empty.
	ImagePullPolicy corev1.PullPolicy
	// XDSAddress is zmeshd's gRPC address the waypoint dials, passed as
	// --xds-address; omitted if empty.
	XDSAddress string
	// ExtraArgs are appended to the waypoint's arguments.
	ExtraArgs []string
	// Sizing scales and sizes every waypoint (replicas, resources, an
	// autoscaler and a disruption budget).
	Sizing Sizing
	// Workers reconciling in parallel; default 2.
	Workers int
	// Resync re-reconciles every waypoint this often; default 10 min.
	Resync time.Duration
	// Log; slog.Default() if nil.
	Log *slog.Logger
}

// FieldManager is the server-side apply field manager of everything the
// controller writes.
const FieldManager = "zmesh-waypoint-controller"

// Controller keeps the Deployment, Service and ServiceAccount of every
// waypoint Gateway, and the waypoint GatewayClass.
type Controller struct {
	kube kubernetes.Interface
	gw   gatewayclient.Interface
	opts Options
	log  *slog.Logger
}

// New returns a controller using the given clients; it needs the
// permissions of deploy/rbac/zmeshd.yaml.
func New(kube kubernetes.Interface, gw gatewayclient.Interface, opts Options) (*Controller, error) {
	if kube == nil || gw == nil {
		return nil, errors.New("waypoint controller: nil client")
	}
	if opts.Image == "" {
		return nil, errors.New("waypoint controller: no waypoint image")
	}
	if opts.Workers < 0 {
		return nil, fmt.Errorf("waypoint controller: negative workers %d", opts.Workers)
	}
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	if opts.Resync == 0 {
		opts.Resync = 10 * time.Minute
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Controller{kube: kube, gw: gw, opts: opts, log: log.With("controller", "waypoint")}, nil
}

// classKey is the queue key of the GatewayClass; Gateways always have a
// namespace, so it cannot collide.
var classKey = types.NamespacedName{Name: ClassName}

// run is the state of one Run: informers, listers, the queue.
type run struct {
	*Controller
	queue       workqueue.TypedRateLimitingInterface[types.NamespacedName]
	gateways    gatewaylisters.GatewayLister
	classes     gatewaylisters.GatewayClassLister
	deployments appsv1listers.DeploymentLister
	services    corev1listers.ServiceLister
	accounts    corev1listers.ServiceAccountLister
	gwIndexer   cache.Indexer
}

// Run watches and reconciles until ctx is cancelled, and returns once its
// goroutines have exited. Only the leader should run it; it may be run
// again after it returned (e.g. on regaining leadership).
func (c *Controller) Run(ctx context.Context) error {
	kubeFactory := informers.NewSharedInformerFactoryWithOptions(c.kube, c.opts.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{label.GatewayManaged.Name: ManagedLabelValue}.String()
		}))
	gwFactory := gatewayinformers.NewSharedInformerFactory(c.gw, c.opts.Resync)
	r := &run{
		Controller: c,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName](),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "waypoint"}),
		gateways:    gwFactory.Gateway().V1().Gateways().Lister(),
		classes:     gwFactory.Gateway().V1().GatewayClasses().Lister(),
		deployments: kubeFactory.Apps().V1().Deployments().Lister(),
		services:    kubeFactory.Core().V1().Services().Lister(),
		accounts:    kubeFactory.Core().V1().ServiceAccounts().Lister(),
		gwIndexer:   gwFactory.Gateway().V1().Gateways().Informer().GetIndexer(),
	}
	// Every ConfigMap, for the Gateways whose parametersRef names one:
	// kept without its data (a change requeues the Gateway, which reads
	// the ConfigMap live).
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.kube, c.opts.Resync)
	cmInformer := cmFactory.Core().V1().ConfigMaps().Informer()
	if err := cmInformer.SetTransform(stripConfigMap); err != nil {
		return fmt.Errorf("waypoint controller: %w", err)
	}
	if err := gwFactory.Gateway().V1().Gateways().Informer().AddIndexers(cache.Indexers{parametersIndex: indexParameters}); err != nil {
		return fmt.Errorf("waypoint controller: %w", err)
	}
	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{gwFactory.Gateway().V1().Gateways().Informer(), handlerFunc(r.onGateway)},
		{gwFactory.Gateway().V1().GatewayClasses().Informer(), handlerFunc(r.onClass)},
		{kubeFactory.Apps().V1().Deployments().Informer(), handlerFunc(r.onOwned)},
		{kubeFactory.Core().V1().Services().Informer(), handlerFunc(r.onOwned)},
		{kubeFactory.Core().V1().ServiceAccounts().Informer(), handlerFunc(r.onOwned)},
		{cmInformer, handlerFunc(r.onConfigMap)},
	}
	for _, h := range handlers {
		if _, err := h.informer.AddEventHandler(h.handler); err != nil {
			return fmt.Errorf("waypoint controller: %w", err)
		}
	}

	var wg sync.WaitGroup
	defer func() {
		r.queue.ShutDown()
		wg.Wait()
		kubeFactory.Shutdown()
		gwFactory.Shutdown()
		cmFactory.Shutdown()
	}()
	kubeFactory.Start(ctx.Done())
	gwFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	c.log.InfoContext(ctx, "waiting for informers")
	for _, synced := range []map[any]bool{anyKeys(kubeFactory.WaitForCacheSync(ctx.Done())), anyKeys(gwFactory.WaitForCacheSync(ctx.Done())), anyKeys(cmFactory.WaitForCacheSync(ctx.Done()))} {
		for typ, ok := range synced {
			if !ok {
				if err := ctx.Err(); err != nil {
					return nil
				}
				return fmt.Errorf("waypoint controller: %v informer did not sync", typ)
			}
		}
	}
	r.queue.Add(classKey)
	for range c.opts.Workers {
		wg.Go(func() {
			for r.next(ctx) {
			}
		})
	}
	c.log.InfoContext(ctx, "running", "workers", c.opts.Workers)
	<-ctx.Done()
	return nil
}

func anyKeys[K comparable](m map[K]bool) map[any]bool {
	out := make(map[any]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// next reconciles one key; false once the queue shut down.
func (r *run) next(ctx context.Context) bool {
	key, shutdown := r.queue.Get()
	if shutdown {
		return false
	}
	defer r.queue.Done(key)
	var err error
	if key == classKey {
		err = r.reconcileClass(ctx)
	} else {
		err = r.reconcileGateway(ctx, key)
	}
	switch {
	case err == nil:
		r.queue.Forget(key)
	case ctx.Err() != nil:
	case apierrors.IsConflict(err):
		// Our cache was behind (often our own last status write): retry
		// once it has caught up; nothing to report.
		r.log.DebugContext(ctx, "reconcile raced a write, retrying", "gateway", key.String())
		r.queue.AddRateLimited(key)
	default:
		r.log.WarnContext(ctx, "reconcile failed, retrying", "gateway", key.String(), "reason", err.Error(), "retries", r.queue.NumRequeues(key))
		r.queue.AddRateLimited(key)
	}
	return true
}

// handlerFunc calls f with the object of every add, update and delete (the
// new one for updates, the last known for deletes).
type handlerFunc func(obj any)

func (f handlerFunc) OnAdd(obj any, _ bool) { f(obj) }
func (f handlerFunc) OnUpdate(_, obj any)   { f(obj) }
func (f handlerFunc) OnDelete(obj any)      { f(unwrapDeleted(obj)) }
func unwrapDeleted(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func (r *run) onGateway(obj any) {
	if gw, ok := obj.(*gatewayv1.Gateway); ok && gw.Spec.GatewayClassName == ClassName {
		r.queue.Add(types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name})
	}
}

// onClass re-creates the class if deleted and re-examines its Gateways,
// which were waiting for it or must now be left alone.
func (r *run) onClass(obj any) {
	gc, ok := obj.(*gatewayv1.GatewayClass)
	if !ok || gc.Name != ClassName {
		return
	}
	r.queue.Add(classKey)
	for _, o := range r.gwIndexer.List() {
		r.onGateway(o)
	}
}

// onOwned requeues the Gateway owning a changed or deleted object, so that
// an object edited or deleted by hand is put back.
func (r *run) onOwned(obj any) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	ref := metav1.GetControllerOf(m)
	if ref == nil || ref.Kind != "Gateway" || ref.APIVersion != gatewayv1.GroupVersion.String() {
		return
	}
	r.queue.Add(types.NamespacedName{Namespace: m.GetNamespace(), Name: ref.Name})
}

// parametersIndex indexes Gateways by the ConfigMap their parametersRef
// names, "namespace/name".
const parametersIndex = "parameters"

func indexParameters(obj any) ([]string, error) {
	gw, ok := obj.(*gatewayv1.Gateway)
	if !ok || gw.Spec.GatewayClassName != ClassName {
		return nil, nil
	}
	name, _ := parametersName(gw)
	if name == "" {
		return nil, nil
	}
	return []string{gw.Namespace + "/" + name}, nil
}

// stripConfigMap keeps a ConfigMap's identity only: the controller needs
// to know that one changed, and reads the one it needs live, so the cache
// of every ConfigMap of the cluster stays small.
func stripConfigMap(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: cm.Name, Namespace: cm.Namespace, UID: cm.UID, ResourceVersion: cm.ResourceVersion,
	}}, nil
}

// onConfigMap requeues the Gateways whose parameters ConfigMap changed,
// appeared or went away.
func (r *run) onConfigMap(obj any) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return
	}
	gws, err := r.gwIndexer.ByIndex(parametersIndex, cm.Namespace+"/"+cm.Name)
	if err != nil {
		return
	}
	for _, o := range gws {
		r.onGateway(o)
	}
}
