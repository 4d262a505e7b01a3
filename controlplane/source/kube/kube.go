// Package kube is the control plane's source in a cluster: shared
// informers on Namespaces, Pods, Services, the Istio kinds and the Gateway
// API kinds, turned into a model.Snapshot after every change.
//
// A kind whose CRD the API server does not serve is skipped with a
// warning (no object of it can exist), so zmeshd runs on a cluster without
// the Gateway API CRDs, say; it starts watching once restarted after the
// CRDs are installed.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Source watches one cluster.
type Source struct {
	Kube    kubernetes.Interface
	Istio   istioclient.Interface
	Gateway gatewayclient.Interface
	Log     *slog.Logger

	// Informers is the core informer factory; Run creates one if nil. Pass
	// one to share its caches (the CA's pod index uses the same pods).
	Informers informers.SharedInformerFactory
}

// kind is one watched kind: how to tell whether the API serves it, and
// how to copy its cache into a snapshot.
type kind struct {
	groupVersion, resource string
	informer               func() cache.SharedIndexInformer
	list                   func(*model.Snapshot) error
}

// Run starts the informers, waits for their caches, then calls publish
// with a snapshot now and after every change (coalesced: a burst of
// events makes few snapshots, never one per event). It returns when ctx
// ends, or with an error if the caches do not sync.
func (s *Source) Run(ctx context.Context, publish func(*model.Snapshot)) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	core := s.Informers
	if core == nil {
		core = informers.NewSharedInformerFactory(s.Kube, 0)
	}
	istio := istioinformers.NewSharedInformerFactory(s.Istio, 0)
	gw := gatewayinformers.NewSharedInformerFactory(s.Gateway, 0)
	all := labels.Everything()

	kinds := []kind{
		{"v1", "namespaces", core.Core().V1().Namespaces().Informer, func(snap *model.Snapshot) (err error) {
			snap.Namespaces, err = core.Core().V1().Namespaces().Lister().List(all)
			return err
		}},
		{"v1", "pods", core.Core().V1().Pods().Informer, func(snap *model.Snapshot) (err error) {
			snap.Pods, err = core.Core().V1().Pods().Lister().List(all)
			return err
		}},
		{"v1", "services", core.Core().V1().Services().Informer, func(snap *model.Snapshot) (err error) {
			snap.Services, err = core.Core().V1().Services().Lister().List(all)
			return err
		}},
		{"networking.istio.io/v1", "serviceentries", istio.Networking().V1().ServiceEntries().Informer, func(snap *model.Snapshot) (err error) {
			snap.ServiceEntries, err = istio.Networking().V1().ServiceEntries().Lister().List(all)
			return err
		}},
		{"security.istio.io/v1", "peerauthentications", istio.Security().V1().PeerAuthentications().Informer, func(snap *model.Snapshot) (err error) {
			snap.PeerAuthentications, err = istio.Security().V1().PeerAuthentications().Lister().List(all)
			return err
		}},
		{"security.istio.io/v1", "authorizationpolicies", istio.Security().V1().AuthorizationPolicies().Informer, func(snap *model.Snapshot) (err error) {
			snap.AuthorizationPolicies, err = istio.Security().V1().AuthorizationPolicies().Lister().List(all)
			return err
		}},
		{"gateway.networking.k8s.io/v1", "gatewayclasses", gw.Gateway().V1().GatewayClasses().Informer, func(snap *model.Snapshot) (err error) {
			snap.GatewayClasses, err = gw.Gateway().V1().GatewayClasses().Lister().List(all)
			return err
		}},
		{"gateway.networking.k8s.io/v1", "gateways", gw.Gateway().V1().Gateways().Informer, func(snap *model.Snapshot) (err error) {
			snap.Gateways, err = gw.Gateway().V1().Gateways().Lister().List(all)
			return err
		}},
		// The L7 kinds, kept for the waypoint.
		{"v1", "nodes", core.Core().V1().Nodes().Informer, func(snap *model.Snapshot) (err error) {
			snap.Nodes, err = core.Core().V1().Nodes().Lister().List(all)
			return err
		}},
		{"security.istio.io/v1", "requestauthentications", istio.Security().V1().RequestAuthentications().Informer, func(snap *model.Snapshot) (err error) {
			snap.RequestAuthentications, err = istio.Security().V1().RequestAuthentications().Lister().List(all)
			return err
		}},
		{"networking.istio.io/v1", "virtualservices", istio.Networking().V1().VirtualServices().Informer, func(snap *model.Snapshot) (err error) {
			snap.VirtualServices, err = istio.Networking().V1().VirtualServices().Lister().List(all)
			return err
		}},
		{"networking.istio.io/v1", "destinationrules", istio.Networking().V1().DestinationRules().Informer, func(snap *model.Snapshot) (err error) {
			snap.DestinationRules, err = istio.Networking().V1().DestinationRules().Lister().List(all)
			return err
		}},
		{"networking.istio.io/v1", "gateways", istio.Networking().V1().Gateways().Informer, func(snap *model.Snapshot) (err error) {
			snap.IstioGateways, err = istio.Networking().V1().Gateways().Lister().List(all)
			return err
		}},
		{"gateway.networking.k8s.io/v1", "httproutes", gw.Gateway().V1().HTTPRoutes().Informer, func(snap *model.Snapshot) (err error) {
			snap.HTTPRoutes, err = gw.Gateway().V1().HTTPRoutes().Lister().List(all)
			return err
		}},
		{"gateway.networking.k8s.io/v1", "grpcroutes", gw.Gateway().V1().GRPCRoutes().Informer, func(snap *model.Snapshot) (err error) {
			snap.GRPCRoutes, err = gw.Gateway().V1().GRPCRoutes().Lister().List(all)
			return err
		}},
	}

	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	var watched []kind
	var synced []cache.InformerSynced
	for _, k := range kinds {
		served, err := s.serves(k.groupVersion, k.resource)
		if err != nil {
			return err
		}
		if !served {
			log.Warn("the API server does not serve this kind; it is not watched (install deploy/crds and restart)", "resource", k.resource, "apiVersion", k.groupVersion)
			continue
		}
		inf := k.informer()
		transform, h := stripManagedFields, handler
		if k.resource == "nodes" {
			// Only a node's labels (its topology) are read; its status
			// changes all the time and must not cause pushes.
			transform = nodeLabelsOnly
			h.UpdateFunc = func(old, cur any) {
				if nodeLabelsChanged(old, cur) {
					notify()
				}
			}
		}
		if err := inf.SetTransform(transform); err != nil {
			return err
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
		watched = append(watched, k)
		synced = append(synced, inf.HasSynced)
	}
	core.Start(ctx.Done())
	istio.Start(ctx.Done())
	gw.Start(ctx.Done())
	defer core.Shutdown()
	defer istio.Shutdown()
	defer gw.Shutdown()

	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("kube: informer caches did not sync")
	}
	log.Info("informers synced", "kinds", len(watched), "took", time.Since(start).Round(time.Millisecond))
	for {
		snap := &model.Snapshot{}
		for _, k := range watched {
			if err := k.list(snap); err != nil {
				return err
			}
		}
		snap.Sort()
		publish(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (s *Source) serves(groupVersion, resource string) (bool, error) {
	list, err := s.Kube.Discovery().ServerResourcesForGroupVersion(groupVersion)
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("kube: discover %s: %w", groupVersion, err)
	}
	for _, r := range list.APIResources {
		if r.Name == resource {
			return true, nil
		}
	}
	return false, nil
}

// stripManagedFields drops what translation never reads, to keep the
// caches small.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		if ann := m.GetAnnotations(); ann != nil {
			if _, ok := ann[corev1.LastAppliedConfigAnnotation]; ok {
				delete(ann, corev1.LastAppliedConfigAnnotation)
			}
		}
	}
	return obj, nil
}

// nodeLabelsChanged reports whether an update of a node changed what
// snapshots hold of it, its labels.
func nodeLabelsChanged(old, cur any) bool {
	o, ok1 := old.(*corev1.Node)
	c, ok2 := cur.(*corev1.Node)
	return !ok1 || !ok2 || !maps.Equal(o.Labels, c.Labels)
}

// nodeLabelsOnly keeps a node's name and labels.
func nodeLabelsOnly(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
	}}, nil
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
