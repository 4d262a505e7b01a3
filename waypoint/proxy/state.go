package proxy

import (
	"sync/atomic"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// state is one snapshot with what the proxy derives from it once, never
// per request: a load balancer per cluster, and the active-fault counter
// of each fault filter with max_active_faults.
type state struct {
	snap         *config.Snapshot
	balancers    map[string]*upstream.Balancer
	activeFaults map[*fault.Fault]*atomic.Int64
}

// newState builds s's balancers, carrying the live state of prev's
// (requests in flight, ejections) to the endpoints that remain.
func newState(prev *state, s *config.Snapshot) *state {
	var pb map[string]*upstream.Balancer
	if prev != nil {
		pb = prev.balancers
	}
	st := &state{snap: s, balancers: upstream.Balancers(pb, s.Clusters, s.Assignments), activeFaults: map[*fault.Fault]*atomic.Int64{}}
	for _, ch := range s.Chains {
		for _, f := range ch.HTTPFilters {
			if f.Fault != nil && f.Fault.MaxActiveFaults > 0 && st.activeFaults[f.Fault] == nil {
				st.activeFaults[f.Fault] = new(atomic.Int64)
			}
		}
	}
	return st
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
