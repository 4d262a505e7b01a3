// Package rootcert publishes the mesh's root certificates as the
// istio-ca-root-cert ConfigMap (key root-cert.pem) in every namespace, as
// istiod does: the waypoint pods the deployer creates, and any workload
// written for Istio, mount it to verify zmeshd and their peers.
//
// The ConfigMap is created in each namespace, re-created when deleted,
// put back when edited, and rewritten in every namespace when the roots
// change. Namespaces being deleted, and the Kubernetes system namespaces
// istiod leaves alone, are skipped. Only the elected zmeshd runs it.
package rootcert

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

const (
	// Name is the ConfigMap's name; Key the key of the PEM bundle.
	Name = "istio-ca-root-cert"
	Key  = "root-cert.pem"
	// labelConfig is the label istiod sets on the ConfigMap.
	labelConfig = "istio.io/config"
)

// ignored are the namespaces istiod publishes nothing to.
var ignored = map[string]bool{
	"kube-system": true, "kube-public": true, "kube-node-lease": true, "local-path-storage": true,
}

// Publisher keeps the ConfigMap in every namespace.
type Publisher struct {
	kube kubernetes.Interface
	log  *slog.Logger

	mu    sync.Mutex
	roots []byte

	namespaces cache.SharedIndexInformer
	configMaps cache.SharedIndexInformer
	queue      workqueue.TypedRateLimitingInterface[string]
}

// New returns a publisher of roots (PEM).
func New(kube kubernetes.Interface, roots []byte, log *slog.Logger) (*Publisher, error) {
	if len(bytes.TrimSpace(roots)) == 0 {
		return nil, fmt.Errorf("rootcert: no root certificates to publish")
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Publisher{kube: kube, log: log, roots: bytes.Clone(roots),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	p.namespaces = informers.NewSharedInformerFactory(kube, 0).Core().V1().Namespaces().Informer()
	p.configMaps = informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", Name).String()
	})).Core().V1().ConfigMaps().Informer()
	enqueue := func(obj any) {
		if o, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = o.Obj
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			p.queue.Add(o.Name)
		case *corev1.ConfigMap:
			p.queue.Add(o.Namespace)
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue}
	if _, err := p.namespaces.AddEventHandler(h); err != nil {
		return nil, err
	}
	if _, err := p.configMaps.AddEventHandler(h); err != nil {
		return nil, err
	}
	return p, nil
}

// SetRoots replaces the roots: every namespace's ConfigMap is rewritten.
func (p *Publisher) SetRoots(roots []byte) {
	p.mu.Lock()
	changed := !bytes.Equal(p.roots, roots)
	p.roots = bytes.Clone(roots)
	p.mu.Unlock()
	if !changed {
		return
	}
	for _, key := range p.namespaces.GetStore().ListKeys() {
		p.queue.Add(key)
	}
}

// Run publishes until ctx ends; it returns once its goroutines have.
func (p *Publisher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer p.queue.ShutDown()
	wg.Go(func() { p.namespaces.Run(ctx.Done()) })
	wg.Go(func() { p.configMaps.Run(ctx.Done()) })
	if !cache.WaitForCacheSync(ctx.Done(), p.namespaces.HasSynced, p.configMaps.HasSynced) {
		return ctx.Err()
	}
	wg.Go(func() {
		for p.next(ctx) {
		}
	})
	<-ctx.Done()
	return nil
}

func (p *Publisher) next(ctx context.Context) bool {
	ns, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(ns)
	if err := p.reconcile(ctx, ns); err != nil {
		if ctx.Err() == nil {
			p.log.Warn("could not publish root certificates", "namespace", ns, "configmap", Name, "error", err)
		}
		p.queue.AddRateLimited(ns)
		return true
	}
	p.queue.Forget(ns)
	return true
}

// Wanted says whether ns gets the ConfigMap: not while it is being
// deleted (the API server refuses new objects there), nor in the system
// namespaces.
func Wanted(ns *corev1.Namespace) bool {
	return ns != nil && !ignored[ns.Name] && ns.DeletionTimestamp == nil && ns.Status.Phase != corev1.NamespaceTerminating
}

func (p *Publisher) reconcile(ctx context.Context, name string) error {
	obj, ok, err := p.namespaces.GetStore().GetByKey(name)
	if err != nil || !ok {
		return err
	}
	if !Wanted(obj.(*corev1.Namespace)) {
		return nil
	}
	p.mu.Lock()
	roots := string(p.roots)
	p.mu.Unlock()
	obj, ok, err = p.configMaps.GetStore().GetByKey(name + "/" + Name)
	if err != nil {
		return err
	}
	if !ok {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: name, Labels: map[string]string{labelConfig: "true"}},
			Data:       map[string]string{Key: roots},
		}
		_, err := p.kube.CoreV1().ConfigMaps(name).Create(ctx, cm, metav1.CreateOptions{FieldManager: "zmeshd"})
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create: %w (retrying once the cache has it)", err)
		}
		if err == nil {
			p.log.Info("published root certificates", "namespace", name, "configmap", Name)
		}
		return err
	}
	cm := obj.(*corev1.ConfigMap)
	if cm.Data[Key] == roots && cm.Labels[labelConfig] == "true" {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[Key] = roots
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Labels[labelConfig] = "true"
	if _, err := p.kube.CoreV1().ConfigMaps(name).Update(ctx, cm, metav1.UpdateOptions{FieldManager: "zmeshd"}); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	p.log.Info("updated root certificates", "namespace", name, "configmap", Name)
	return nil
}
