package ca

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/zmesh/zmesh/identity"
)

// indexNodeIdentity indexes pods that may hold a certificate by
// "<node>/<namespace>/<service account>".
const indexNodeIdentity = "zmesh.ca/node-identity"

// PodIndex answers, from a pod informer's cache, which identities run on
// which node: the lookup behind identity.NodeAuthorizer.
type PodIndex struct {
	informer cache.SharedIndexInformer
	td       spiffeid.TrustDomain
}

// NewPodIndex adds its index to informer, a pod informer (e.g.
// informers.NewSharedInformerFactory(client, 0).Core().V1().Pods().Informer())
// that the caller starts; it must not have started yet. Identities outside
// td are on no node.
func NewPodIndex(informer cache.SharedIndexInformer, td spiffeid.TrustDomain) (*PodIndex, error) {
	if informer == nil {
		return nil, errors.New("pod index: nil informer")
	}
	if td.IsZero() {
		return nil, errors.New("pod index: empty trust domain")
	}
	if err := informer.AddIndexers(cache.Indexers{indexNodeIdentity: nodeIdentityKeys}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	return &PodIndex{informer: informer, td: td}, nil
}

// nodeIdentityKeys indexes a pod that is scheduled and not terminated:
// a pod that finished (Succeeded, Failed) no longer needs a certificate,
// one being deleted still does while it drains.
func nodeIdentityKeys(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return nil, nil
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return nil, nil
	}
	return []string{nodeIdentityKey(pod.Spec.NodeName, pod.Namespace, serviceAccountOf(pod))}, nil
}

func nodeIdentityKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

// serviceAccountOf is the pod's service account, "default" when unset as
// the API server's admission would make it.
func serviceAccountOf(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// HasIdentityOnNode reports whether a non-terminated pod scheduled on node
// runs as id's service account in id's namespace.
func (p *PodIndex) HasIdentityOnNode(node string, id spiffeid.ID) bool {
	if node == "" || id.TrustDomain() != p.td {
		return false
	}
	w, err := identity.WorkloadOf(id)
	if err != nil {
		return false
	}
	pods, err := p.informer.GetIndexer().ByIndex(indexNodeIdentity, nodeIdentityKey(node, w.Namespace, w.ServiceAccount))
	return err == nil && len(pods) > 0
}

// HasSynced reports whether the informer has listed every pod once.
func (p *PodIndex) HasSynced() bool { return p.informer.HasSynced() }
