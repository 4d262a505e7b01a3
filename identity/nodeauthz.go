package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrNotOnNode is returned when a node agent asks for an identity that no
// pod on its node has.
var ErrNotOnNode = errors.New("no pod with this identity on the caller's node")

// NodeAuthorizer lets node agents (ztunnels) obtain the identities of the
// pods scheduled on their own node, as istiod's node authorizer does. It
// denies everything else: callers not listed as node agents, callers with
// no node, identities with no pod on the caller's node.
type NodeAuthorizer struct {
	agents            map[spiffeid.ID]bool
	hasIdentityOnNode func(node string, id spiffeid.ID) bool
}

// NewNodeAuthorizer returns an authorizer trusting the given node agent
// identities, asking hasIdentityOnNode (backed by the pod store) whether a
// node runs a pod with an identity.
func NewNodeAuthorizer(agents []spiffeid.ID, hasIdentityOnNode func(node string, id spiffeid.ID) bool) (*NodeAuthorizer, error) {
	if hasIdentityOnNode == nil {
		return nil, errors.New("node authorizer: nil pod lookup")
	}
	a := &NodeAuthorizer{agents: make(map[spiffeid.ID]bool, len(agents)), hasIdentityOnNode: hasIdentityOnNode}
	for _, id := range agents {
		if id.IsZero() {
			return nil, errors.New("node authorizer: empty node agent identity")
		}
		a.agents[id] = true
	}
	return a, nil
}

// AuthorizeImpersonation implements Authorizer.
func (a *NodeAuthorizer) AuthorizeImpersonation(_ context.Context, caller Caller, requested spiffeid.ID) error {
	if !a.agents[caller.ID] {
		return fmt.Errorf("%s is not a node agent", caller.ID)
	}
	if caller.Node == "" {
		return errors.New("caller's node is unknown")
	}
	if !a.hasIdentityOnNode(caller.Node, requested) {
		return fmt.Errorf("node %s: %w", caller.Node, ErrNotOnNode)
	}
	return nil
}
