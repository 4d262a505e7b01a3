// Package kube is zmesh-cni-agent's membership source in a cluster: shared
// informers on this node's pods and on namespaces decide which pods are
// ambient (the Istio labels), and the pods' redirection annotation says
// which ones the agent captured. It is kept apart from package agent so
// that k8s.io/* never reaches the zmesh-cni plugin binary.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/zmesh/zmesh/cni/agent"
)

// The Istio-compatible surface.
const (
	LabelDataplaneMode    = "istio.io/dataplane-mode"
	ModeAmbient           = "ambient"
	ModeNone              = "none"
	AnnotationRedirection = "ambient.istio.io/redirection"
	RedirectionEnabled    = "enabled"
)

// Ambient decides whether a pod belongs in the mesh: its namespace or
// itself labelled ambient, not opted out with none, not on the host's
// network, not in an excluded namespace.
func Ambient(ns *corev1.Namespace, pod *corev1.Pod, excluded []string) bool {
	if pod.Spec.HostNetwork || slices.Contains(excluded, pod.Namespace) {
		return false
	}
	switch pod.Labels[LabelDataplaneMode] {
	case ModeNone:
		return false
	case ModeAmbient:
		return true
	}
	return ns != nil && ns.Labels[LabelDataplaneMode] == ModeAmbient
}

// Config configures Members.
type Config struct {
	Client kubernetes.Interface
	// Node is this node's name: only its pods are watched.
	Node string
	// ExcludedNamespaces never join the mesh (kube-system).
	ExcludedNamespaces []string
	// Resync of the informers; 0 means none.
	Resync time.Duration
	Log    *slog.Logger
}

// Members implements agent.Source and agent.Status from the API server.
type Members struct {
	cfg     Config
	log     *slog.Logger
	podInf  informers.SharedInformerFactory
	nsInf   informers.SharedInformerFactory
	pods    listersv1.PodLister
	nss     listersv1.NamespaceLister
	synced  []cache.InformerSynced
	changed chan struct{}
}

var (
	_ agent.Source = (*Members)(nil)
	_ agent.Status = (*Members)(nil)
)

// New builds the informers; Run starts them.
func New(cfg Config) (*Members, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube members: no client")
	}
	if cfg.Node == "" {
		return nil, errors.New("kube members: no node name")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Members{cfg: cfg, log: cfg.Log, changed: make(chan struct{}, 1)}
	m.podInf = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + cfg.Node }))
	m.nsInf = informers.NewSharedInformerFactory(cfg.Client, cfg.Resync)
	pods, nss := m.podInf.Core().V1().Pods(), m.nsInf.Core().V1().Namespaces()
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { m.notify() },
		UpdateFunc: func(any, any) { m.notify() },
		DeleteFunc: func(any) { m.notify() },
	}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer()} {
		if _, err := inf.AddEventHandler(notify); err != nil {
			return nil, err
		}
		m.synced = append(m.synced, inf.HasSynced)
	}
	m.pods, m.nss = pods.Lister(), nss.Lister()
	return m, nil
}

func (m *Members) notify() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// Changed implements agent.Source.
func (m *Members) Changed() <-chan struct{} { return m.changed }

// Run starts the informers and returns after they stopped, once ctx ends.
func (m *Members) Run(ctx context.Context) error {
	m.podInf.Start(ctx.Done())
	m.nsInf.Start(ctx.Done())
	<-ctx.Done()
	m.podInf.Shutdown()
	m.nsInf.Shutdown()
	return nil
}

// WaitSynced blocks until the informers listed everything once.
func (m *Members) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), m.synced...) {
		return fmt.Errorf("kube members: caches not synced: %w", context.Cause(ctx))
	}
	return nil
}

// lookupTimeout bounds the API server reads of one Lookup.
const lookupTimeout = 10 * time.Second

// Lookup implements agent.Membership for CNI ADD. The pod is usually newer
// than the cache, and its namespace's labels may have changed since the
// cache saw them: on a miss, both are read from the API server. What
// cannot be read is an error (ErrMembershipUnknown), never "not ambient".
func (m *Members) Lookup(ctx context.Context, namespace, name string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	pod, err := m.pods.Pods(namespace).Get(name)
	cached := err == nil
	if apierrors.IsNotFound(err) {
		pod, err = m.cfg.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: read pod %s/%s: %w", agent.ErrMembershipUnknown, namespace, name, err)
	}
	var ns *corev1.Namespace
	if cached {
		ns, err = m.nss.Get(namespace)
	}
	if !cached || apierrors.IsNotFound(err) {
		ns, err = m.cfg.Client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: read namespace %s: %w", agent.ErrMembershipUnknown, namespace, err)
	}
	return serviceAccount(pod), Ambient(ns, pod, m.cfg.ExcludedNamespaces), nil
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// Pods implements agent.Source: this node's running pods with an address.
func (m *Members) Pods() []agent.PodInfo {
	pods, err := m.pods.List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []agent.PodInfo
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		info := agent.PodInfo{UID: string(p.UID), Name: p.Name, Namespace: p.Namespace, ServiceAccount: serviceAccount(p)}
		for _, ip := range p.Status.PodIPs {
			info.IPs = append(info.IPs, ip.IP)
		}
		if len(info.IPs) == 0 && p.Status.PodIP != "" {
			info.IPs = []string{p.Status.PodIP}
		}
		if len(info.IPs) == 0 {
			continue
		}
		ns, _ := m.nss.Get(p.Namespace)
		info.Ambient = Ambient(ns, p, m.cfg.ExcludedNamespaces)
		out = append(out, info)
	}
	return out
}

// Pod returns what the cache holds of a pod by uid, for the restart
// reconcile.
func (m *Members) Pod(uid string) (agent.PodInfo, bool) {
	for _, p := range m.Pods() {
		if p.UID == uid {
			return p, true
		}
	}
	return agent.PodInfo{}, false
}

// Set implements agent.Status: the redirection annotation, by JSON merge
// patch, only when the cache says it differs.
func (m *Members) Set(ctx context.Context, p agent.PodInfo, enabled bool) error {
	pod, err := m.pods.Pods(p.Namespace).Get(p.Name)
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile
	}
	if err != nil {
		return err
	}
	if string(pod.UID) != p.UID {
		return nil // another pod of the same name now
	}
	if (pod.Annotations[AnnotationRedirection] == RedirectionEnabled) == enabled {
		return nil
	}
	var value any // null removes the key
	if enabled {
		value = RedirectionEnabled
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         p.UID, // a precondition: never annotate a successor of the same name
		"annotations": map[string]any{AnnotationRedirection: value},
	}})
	if err != nil {
		return err
	}
	_, err = m.cfg.Client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	m.log.Info("pod redirection status", "pod", p.Namespace+"/"+p.Name, "enabled", enabled)
	return nil
}
