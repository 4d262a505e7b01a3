package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/identity"
)

// DefaultNodeAgents are the service accounts trusted to ask for the
// identities of the pods on their node: ztunnel's, wherever Istio's charts
// install it (istiod's CA_TRUSTED_NODE_ACCOUNTS default).
var DefaultNodeAgents = []string{"istio-system/ztunnel", "kube-system/ztunnel"}

// ErrPodsNotSynced is returned while the pod index has not listed every
// pod yet, so that no pod's identity is refused for want of knowing it.
var ErrPodsNotSynced = errors.New("pod index not synced yet, retry")

// ParseNodeAgents turns "namespace/serviceaccount" entries into the
// identities of node agents in td.
func ParseNodeAgents(td spiffeid.TrustDomain, entries []string) ([]spiffeid.ID, error) {
	ids := make([]spiffeid.ID, 0, len(entries))
	for _, e := range entries {
		ns, sa, ok := strings.Cut(strings.TrimSpace(e), "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return nil, fmt.Errorf("node agent %q: want namespace/serviceaccount", e)
		}
		id, err := identity.WorkloadID(td, ns, sa)
		if err != nil {
			return nil, fmt.Errorf("node agent %q: %w", e, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// NodeAuthorizer is identity.NodeAuthorizer over a PodIndex: node agents
// may obtain the identities of the pods on their own node. It adds two
// refusals that say why: the pod index has not synced yet, and a node
// agent whose token names no node (a token not bound to its Pod).
type NodeAuthorizer struct {
	pods   *PodIndex
	agents map[spiffeid.ID]bool
	inner  *identity.NodeAuthorizer
}

// NewNodeAuthorizer trusts the given node agents (see ParseNodeAgents).
func NewNodeAuthorizer(agents []spiffeid.ID, pods *PodIndex) (*NodeAuthorizer, error) {
	if pods == nil {
		return nil, errors.New("node authorizer: nil pod index")
	}
	inner, err := identity.NewNodeAuthorizer(agents, pods.HasIdentityOnNode)
	if err != nil {
		return nil, err
	}
	a := &NodeAuthorizer{pods: pods, agents: make(map[spiffeid.ID]bool, len(agents)), inner: inner}
	for _, id := range agents {
		a.agents[id] = true
	}
	return a, nil
}

// AuthorizeImpersonation implements identity.Authorizer.
func (a *NodeAuthorizer) AuthorizeImpersonation(ctx context.Context, caller identity.Caller, requested spiffeid.ID) error {
	if a.agents[caller.ID] && caller.Node == "" {
		return fmt.Errorf("node agent %s presented a token bound to no node (request it with a boundObjectRef to its Pod and audience %s)", caller.ID, Audience)
	}
	if !a.pods.HasSynced() {
		return ErrPodsNotSynced
	}
	return a.inner.AuthorizeImpersonation(ctx, caller, requested)
}
