package proxy

import (
	"log/slog"
	"sync/atomic"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// state is one snapshot with what the proxy derives from it once, never
// per request: per cluster a load balancer, an outlier detector (for the
// clusters that have outlier detection) and the circuit breakers; and the
// active-fault counter of each fault filter with max_active_faults.
type state struct {
	snap         *config.Snapshot
	balancers    map[string]*upstream.Balancer
	detectors    map[string]*upstream.Detector
	admissions   map[string]*upstream.Admission
	activeFaults map[*fault.Fault]*atomic.Int64
}

// newState builds s's balancers, detectors and admissions, carrying the
// live state of prev's (requests in flight, ejections, failure counts,
// circuit-breaker counts and statistics) to the endpoints and clusters
// that remain.
func newState(prev *state, s *config.Snapshot, log *slog.Logger) *state {
	var (
		pb map[string]*upstream.Balancer
		pd map[string]*upstream.Detector
		pa map[string]*upstream.Admission
	)
	if prev != nil {
		pb, pd, pa = prev.balancers, prev.detectors, prev.admissions
	}
	st := &state{snap: s, activeFaults: map[*fault.Fault]*atomic.Int64{}}
	st.balancers = upstream.Balancers(pb, s.Clusters, s.Assignments)
	st.detectors = upstream.Detectors(pd, st.balancers, upstream.DetectorOptions{Logger: log})
	st.admissions = upstream.Admissions(pa, s.Clusters)
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
// cluster has no endpoint to use (or does not exist). Ejected endpoints
// are not picked unless the cluster is in panic mode.
func (st *state) pick(cluster string, r upstream.PickRequest) (*upstream.Host, bool) {
	b := st.balancers[cluster]
	if b == nil {
		return nil, false
	}
	return b.Pick(r)
}

// report records the outcome of one attempt on h with cluster's outlier
// detector (nothing when the cluster has none).
func (st *state) report(cluster string, h *upstream.Host, o upstream.Outcome) {
	st.detectors[cluster].Report(h, o)
}
