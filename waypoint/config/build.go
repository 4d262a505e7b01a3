package config

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// The type URLs of the resources a snapshot is built from, the keys of
// Snapshot.Resources.
const (
	TypeListener   = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeRoute      = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	TypeCluster    = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeAssignment = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Resources is one set of Envoy resources to build a snapshot from.
type Resources struct {
	// Version names the set (for logs and /config_dump).
	Version     string
	Listeners   []*listenerv3.Listener
	Routes      []*routev3.RouteConfiguration
	Clusters    []*clusterv3.Cluster
	Assignments []*endpointv3.ClusterLoadAssignment
	// Versions are each resource's version, by type URL then name, for
	// /config_dump; optional.
	Versions map[string]map[string]string
}

// MissingRoutesError is Build's answer when a chain names a route
// configuration the set does not hold. It is not a refusal: over xDS the
// route configurations follow the listener that names them, so the set is
// not complete yet, and the waypoint keeps serving its last snapshot.
type MissingRoutesError struct {
	Names []string // sorted
}

func (e *MissingRoutesError) Error() string {
	return "route configurations not received yet: " + strings.Join(e.Names, ", ")
}

// Build compiles one consistent set of resources into a Snapshot.
//
//   - Every resource is compiled; the first refusal is its *NackError.
//   - Two listeners claiming one destination is a *NackError on the later
//     listener.
//   - A chain naming a route configuration absent from the set is a
//     *MissingRoutesError: the set is not ready, nothing is refused.
//   - A route or a TCP chain naming a cluster absent from the set is not an
//     error, nor a cluster without an assignment: as in Envoy, such a
//     request is answered at request time (503, flag NC, or no healthy
//     upstream), and the rest of the configuration serves.
//
// Route configurations no chain names are compiled (so that a bad one is
// still refused) and kept in the snapshot.
func Build(r Resources) (*Snapshot, error) {
	s := &Snapshot{
		Version:     r.Version,
		Chains:      map[netip.AddrPort]*Chain{},
		Routes:      make(map[string]*route.Table, len(r.Routes)),
		Resources:   map[string]map[string]proto.Message{TypeListener: {}, TypeRoute: {}, TypeCluster: {}, TypeAssignment: {}},
		Versions:    r.Versions,
		Clusters:    map[string]*upstream.Cluster{},
		Assignments: map[string]*upstream.Assignment{},
	}
	needed := map[string]bool{}
	owner := map[netip.AddrPort]string{}
	for _, l := range r.Listeners {
		chains, routes, err := CompileListener(l)
		if err != nil {
			return nil, err
		}
		if _, dup := s.Resources[TypeListener][l.GetName()]; dup {
			return nil, &NackError{Resource: listenerResource(l.GetName()), Path: "name", Problem: "duplicate listener name"}
		}
		// In address order, so that a conflict always names the same chain.
		for _, d := range slices.SortedFunc(maps.Keys(chains), func(a, b netip.AddrPort) int { return a.Compare(b) }) {
			c := chains[d]
			if prev, dup := owner[d]; dup {
				return nil, &NackError{Resource: listenerResource(l.GetName()), Path: "filter_chains",
					Problem: fmt.Sprintf("chain %q matches destination %s, which listener %q already serves", c.Name, d, prev)}
			}
			owner[d] = l.GetName()
			s.Chains[d] = c
		}
		for _, n := range routes {
			needed[n] = true
		}
		s.Resources[TypeListener][l.GetName()] = l
	}
	for _, rc := range r.Routes {
		t, err := CompileRoutes(rc)
		if err != nil {
			return nil, err
		}
		if _, dup := s.Routes[rc.GetName()]; dup {
			return nil, &NackError{Resource: rc.GetName(), Path: "name", Problem: "duplicate route configuration name"}
		}
		s.Routes[rc.GetName()] = t
		s.Resources[TypeRoute][rc.GetName()] = rc
	}
	var missing []string
	for n := range needed {
		if s.Routes[n] == nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, &MissingRoutesError{Names: missing}
	}
	var err error
	if s.Clusters, err = CompileClusters(r.Clusters); err != nil {
		return nil, err
	}
	for _, c := range r.Clusters {
		s.Resources[TypeCluster][c.GetName()] = c
	}
	if s.Assignments, err = CompileAssignments(r.Assignments); err != nil {
		return nil, err
	}
	for _, a := range r.Assignments {
		s.Resources[TypeAssignment][a.GetClusterName()] = a
	}
	return s, nil
}
