package proxy

import (
	"net/netip"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// state is one snapshot with what the proxy derives from it once, never
// per request.
type state struct {
	snap *config.Snapshot
}

func newState(s *config.Snapshot) *state {
	return &state{snap: s}
}

// pickRequest is what endpoint selection may look at.
type pickRequest struct {
	random    uint64
	attempted []netip.AddrPort
}

// pick chooses an endpoint of cluster for one request; false when the
// cluster has none that is healthy (or does not exist).
func (st *state) pick(cluster string, r pickRequest) (upstream.Endpoint, bool) {
	c := st.snap.Clusters[cluster]
	if c == nil {
		return upstream.Endpoint{}, false
	}
	a := st.snap.Assignments[c.EDSServiceName]
	if a == nil {
		return upstream.Endpoint{}, false
	}
	var healthy []upstream.Endpoint
	for _, prio := range a.Priorities {
		for _, l := range prio {
			for _, e := range l.Endpoints {
				if e.Health == upstream.Healthy {
					healthy = append(healthy, e)
				}
			}
		}
		if len(healthy) > 0 {
			break
		}
	}
	if len(healthy) == 0 {
		return upstream.Endpoint{}, false
	}
	return healthy[r.random%uint64(len(healthy))], true
}
