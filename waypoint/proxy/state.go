package proxy

import (
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// state is one snapshot with what the proxy derives from it once, never
// per request: a load balancer per cluster.
type state struct {
	snap      *config.Snapshot
	balancers map[string]*upstream.Balancer
}

// newState builds s's balancers, carrying the live state of prev's
// (requests in flight, ejections) to the endpoints that remain.
func newState(prev *state, s *config.Snapshot) *state {
	var pb map[string]*upstream.Balancer
	if prev != nil {
		pb = prev.balancers
	}
	return &state{snap: s, balancers: upstream.Balancers(pb, s.Clusters, s.Assignments)}
}

// pick chooses an endpoint of cluster for one request; false when the
// cluster has no endpoint to use (or does not exist).
func (st *state) pick(cluster string, r upstream.PickRequest) (*upstream.Host, bool) {
	b := st.balancers[cluster]
	if b == nil {
		return nil, false
	}
	return b.Pick(r)
}
