package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// Envoy v3 type URLs, served to waypoints, one view per waypoint.
const (
	TypeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	TypeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// EnvoyTypes are the types a waypoint subscribes to.
var EnvoyTypes = []string{TypeListener, TypeRoute, TypeCluster, TypeEndpoint}

// ViewKey names a waypoint Gateway. A proxy whose authenticated identity
// is spiffe://<trust domain>/ns/<Namespace>/sa/<Name> gets that Gateway's
// view: the deployer runs a waypoint's pods under a service account named
// after its Gateway, in the Gateway's namespace.
//
// The view is chosen by the identity the proxy authenticated with (its
// client certificate or its service account token), never by its node id
// or metadata, which are the proxy's own claims: a pod able to reach
// zmeshd could otherwise read any waypoint's routes, clusters and
// endpoints, and a waypoint misconfigured with another's node id would
// serve another's traffic.
//
// Load assignments depend on where the waypoint runs (localityLbSetting
// is relative to the proxy's locality), so a Gateway may have a view per
// locality of its pods, keyed with Locality ("region/zone/subzone"),
// shared by the replicas in that locality; Locality "" is the view of a
// replica whose locality is not known.
type ViewKey struct {
	Namespace, Name string
	Locality        string
}

func (k ViewKey) String() string {
	if k.Locality != "" {
		return k.Namespace + "/" + k.Name + "@" + k.Locality
	}
	return k.Namespace + "/" + k.Name
}

// gateway is k without its locality.
func (k ViewKey) gateway() ViewKey { return ViewKey{Namespace: k.Namespace, Name: k.Name} }

// ViewOf returns the view key of an authenticated principal, false when it
// is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>).
func ViewOf(principal string) (ViewKey, bool) {
	id, err := spiffeid.FromString(principal)
	if err != nil {
		return ViewKey{}, false
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return ViewKey{}, false
	}
	return ViewKey{Namespace: parts[1], Name: parts[3]}, true
}

// View is one waypoint's resources: by type URL, then by name.
type View map[string]map[string]proto.Message

// view is the server's state of one waypoint's view.
type view struct {
	types map[string]*typeState
	// live is false once the waypoint is gone: the view is kept, empty,
	// while proxies of its identity are connected.
	live bool
}

// ServeViews makes the server serve typeURLs per waypoint (see ViewKey).
// Call it before serving.
func (s *Server) ServeViews(typeURLs ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range typeURLs {
		if _, ok := s.types[t]; ok {
			return fmt.Errorf("xds: type %s is already served to every proxy", t)
		}
		s.viewTypes[t] = true
		s.noView[t] = &typeState{url: t, res: map[string]*resource{}}
	}
	return nil
}

// SetViews makes views the complete set of waypoint views. Each view is
// diffed against its previous content as Set does, and its encoding is
// shared by every replica of the waypoint; a view that is gone has its
// resources removed from the proxies that still hold them. It returns how
// many resources changed and were removed over all views.
func (s *Server) SetViews(views map[ViewKey]View) (changed, removed int, err error) {
	return s.SetLocatedViews(views, nil)
}

// SetLocatedViews is SetViews with the locality views: located maps the
// address of each waypoint pod whose locality is known to the view it is
// served (a key with Locality). A proxy is served the view of its
// connection's peer address when that view belongs to the Gateway its
// identity selects and exists; else its Gateway's view without locality. A
// proxy whose view changes (its pod appeared, or moved) is sent the new
// view's resources and has the old view's others removed.
func (s *Server) SetLocatedViews(views map[ViewKey]View, located map[netip.Addr]ViewKey) (changed, removed int, err error) {
	for key, v := range views {
		for url := range v {
			if !s.viewTypes[url] {
				return 0, 0, fmt.Errorf("xds: view %s: type %s is not served per waypoint", key, url)
			}
		}
	}
	s.mu.Lock()
	var work []struct {
		ts  *typeState
		res map[string]proto.Message
	}
	for key, vs := range s.views {
		if _, ok := views[key]; !ok {
			vs.live = false
			for _, ts := range vs.types {
				work = append(work, struct {
					ts  *typeState
					res map[string]proto.Message
				}{ts, nil})
			}
		}
	}
	for key, v := range views {
		vs := s.views[key]
		if vs == nil {
			vs = &view{types: map[string]*typeState{}}
			for url := range s.viewTypes {
				vs.types[url] = &typeState{url: url, view: &key, res: map[string]*resource{}}
			}
			s.views[key] = vs
		}
		vs.live = true
		for url, ts := range vs.types {
			work = append(work, struct {
				ts  *typeState
				res map[string]proto.Message
			}{ts, v[url]})
		}
	}
	s.mu.Unlock()
	nextGen := func() uint64 { s.viewGen++; return s.viewGen }
	for _, w := range work {
		c, r, err := s.set(w.ts, w.res, nextGen)
		if err != nil {
			return changed, removed, fmt.Errorf("view %s: %w", *w.ts.view, err)
		}
		changed += c
		removed += r
	}
	// Streams follow their pods to the views of their localities.
	s.mu.Lock()
	s.located = located
	switched := false
	for _, st := range s.streams {
		if v := s.viewForLocked(st); st.hasView && v != st.view {
			st.view, switched = v, true
		}
	}
	if switched {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	// Forget emptied views no proxy is connected to.
	inUse := map[ViewKey]bool{}
	for _, st := range s.streams {
		if st.hasView {
			inUse[st.view] = true
			for _, sub := range st.subs {
				if sub.from != nil {
					inUse[*sub.from] = true
				}
			}
		}
	}
	maps.DeleteFunc(s.views, func(key ViewKey, vs *view) bool {
		if _, ok := views[key]; ok || inUse[key] {
			return false
		}
		for _, ts := range vs.types {
			if len(ts.res) > 0 {
				return false
			}
		}
		return true
	})
	s.mu.Unlock()
	return changed, removed, nil
}

// Views returns the waypoints that have a view, sorted.
func (s *Server) Views() []ViewKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.SortedFunc(maps.Keys(s.views), func(a, b ViewKey) int { return strings.Compare(a.String(), b.String()) })
}

// viewForLocked is the view st is to be served: its Gateway's (from its
// identity), in the locality of its peer address when that address is one
// of the Gateway's pods and the locality has a view.
func (s *Server) viewForLocked(st *stream) ViewKey {
	if !st.hasView {
		return ViewKey{}
	}
	base := st.view.gateway()
	if k, ok := s.located[st.peerIP]; ok && st.peerIP.IsValid() && k.gateway() == base {
		if vs := s.views[k]; vs != nil && vs.live {
			return k
		}
	}
	return base
}

// typeOfLocked returns the state st is served for typeURL: the shared
// type, st's waypoint view, or the empty state of a proxy without a view;
// nil if typeURL is not served.
func (s *Server) typeOfLocked(st *stream, typeURL string) *typeState {
	if ts := s.types[typeURL]; ts != nil {
		return ts
	}
	if !s.viewTypes[typeURL] {
		return nil
	}
	if st.hasView {
		if vs := s.views[st.view]; vs != nil {
			return vs.types[typeURL]
		}
	}
	return s.noView[typeURL]
}

// noViewReason says why a proxy subscribed to a view type gets nothing,
// "" when it has a view.
func (s *Server) noViewReasonLocked(st *stream) string {
	switch {
	case st.principal == "":
		return "no authenticated identity: waypoint resources are served on the TLS port only"
	case !st.hasView:
		return fmt.Sprintf("identity %s is not a workload identity (spiffe://<trust domain>/ns/<namespace>/sa/<name>)", st.principal)
	case s.views[st.view] == nil || !s.views[st.view].live:
		return fmt.Sprintf("no %s Gateway %s for identity %s", "istio-waypoint", st.view, st.principal)
	}
	return ""
}

// ViewResources returns the names of typeURL's resources in key's view,
// sorted.
func (s *Server) ViewResources(key ViewKey, typeURL string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vs := s.views[key]
	if vs == nil || vs.types[typeURL] == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(vs.types[typeURL].res))
}
