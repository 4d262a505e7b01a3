// Package xds serves the control plane's resources to proxies over gRPC
// delta ADS: ztunnel's istio.workload.Address and istio.security.
// Authorization, shared by every proxy, and the Envoy types of waypoints,
// one view per waypoint Gateway (views.go).
//
// Which view a proxy gets follows from the identity it authenticated with
// (its client certificate or bearer token): spiffe://<td>/ns/N/sa/S is
// served Gateway N/S's view, because the deployer runs a waypoint under
// the service account named after its Gateway. Node ids and metadata are
// the proxy's own claims, shown in syncz and never used to choose: a pod
// that reaches zmeshd could otherwise read any waypoint's routes and
// endpoints. An identity with no waypoint Gateway gets no Envoy resources.
// Within its Gateway, a replica is served the view of its locality when its
// connection comes from the address of one of the Gateway's pods whose
// locality is known (SetLocatedViews): load assignments are prioritised
// relative to where the waypoint runs, as istiod does per proxy.
//
// A change costs what it touched, not the size of the mesh: Set diffs the
// new resource set against the last by each resource's deterministic
// encoding (not even encoding a message that is the very pointer it was
// given last time) and records the changed names in a log of generations;
// each stream remembers the generation it last sent per type and sends
// only the names logged since. The encoded bytes are computed once and shared by
// every stream. (go-control-plane's linear cache, tried first, recomputes
// every wildcard subscription against every resource on each change and
// on each ACK: with 12 000 resources and 50 proxies, one pod change took
// 250 ms to reach them all.)
//
// The server also records what every connected proxy has acknowledged,
// for /debug/syncz and `zmeshctl proxy-status`.
package xds

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type URLs served to ztunnel, wire-compatible with istiod's.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Server is a delta ADS server over a fixed set of resource types.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	log     *slog.Logger
	metrics *metrics
	types   map[string]*typeState

	// mu guards every typeState's contents, streams and changed.
	mu      sync.RWMutex
	streams map[int64]*stream
	nextID  int64
	// changed is closed (and replaced) by every Set that changed
	// something: streams wait on it.
	changed chan struct{}

	// viewTypes are the types served per waypoint (views.go); views
	// holds each waypoint's, noView the empty state of a proxy that has
	// none.
	viewTypes map[string]bool
	views     map[ViewKey]*view
	noView    map[string]*typeState
	// located maps waypoint pod addresses to their locality views
	// (SetLocatedViews).
	located map[netip.Addr]ViewKey
	// viewGen numbers the changes of every view: a view that is dropped
	// and built again continues above what any stream was sent.
	viewGen uint64
}

// typeState is one type's resources and the log of their changes.
type typeState struct {
	url string
	// loaded says Set was called once: until then the type's (empty)
	// resources are not the mesh's, and new subscriptions wait.
	loaded bool
	// view is the waypoint whose view this is; nil for a type every
	// proxy shares.
	view  *ViewKey
	gen   uint64
	setAt time.Time // when gen was set
	res   map[string]*resource
	// log holds the names each generation changed, oldest first, back to
	// the oldest generation a stream has not yet been sent.
	log []change
}

type resource struct {
	body    []byte
	version string
	// msg is the message body encodes: Set does not encode it again when
	// it is handed the same pointer.
	msg proto.Message
}

type change struct {
	gen   uint64
	names []string
}

// New returns a server for typeURLs, registering its metrics with reg
// (nil: not registered).
func New(log *slog.Logger, reg prometheus.Registerer, typeURLs ...string) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		log:     log,
		metrics: newMetrics(reg),
		types:   map[string]*typeState{},
		streams: map[int64]*stream{},
		changed: make(chan struct{}),

		viewTypes: map[string]bool{},
		views:     map[ViewKey]*view{},
		noView:    map[string]*typeState{},
	}
	for _, t := range typeURLs {
		s.types[t] = &typeState{url: t, res: map[string]*resource{}}
	}
	return s
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// Set makes resources the complete set of typeURL's resources, by name.
// Only those that differ from the previous Set (by their deterministic
// encoding) and those that disappeared are pushed. A message that is the
// very pointer Set was given for its name last time is taken as unchanged
// without encoding it again, so callers must not modify a message once
// they handed it to Set. It returns how many resources it changed and
// removed.
func (s *Server) Set(typeURL string, resources map[string]proto.Message) (changed, removed int, err error) {
	ts, ok := s.types[typeURL]
	if !ok {
		return 0, 0, fmt.Errorf("xds: type %s is not served", typeURL)
	}
	changed, removed, err = s.set(ts, resources, func() uint64 { return ts.gen + 1 })
	if err != nil {
		return 0, 0, err
	}
	if changed+removed > 0 {
		s.metrics.resources.WithLabelValues(typeURL).Set(float64(len(resources)))
	}
	s.mu.Lock()
	if !ts.loaded {
		// The first Set, maybe of an empty mesh: wake the streams whose
		// first answer waited for it.
		ts.loaded = true
		close(s.changed)
		s.changed = make(chan struct{})
	}
	s.mu.Unlock()
	return changed, removed, nil
}

// set makes resources the complete set of ts's resources; nextGen gives
// the generation of a change (called under the lock).
func (s *Server) set(ts *typeState, resources map[string]proto.Message, nextGen func() uint64) (changed, removed int, err error) {
	typeURL := ts.url
	start := time.Now()
	// Encode outside the lock: readers keep serving meanwhile.
	s.mu.RLock()
	prev := ts.res
	s.mu.RUnlock()
	next := make(map[string]*resource, len(resources))
	type item struct {
		name string
		msg  proto.Message
		res  *resource
		same bool // encodes as before
		err  error
	}
	var items []item // those to encode
	for name, m := range resources {
		if old, ok := prev[name]; ok && old.msg == m {
			next[name] = old
			continue
		}
		items = append(items, item{name: name, msg: m})
	}
	// Encode on every core: with a mesh-sized set this is most of a push.
	workers := min(runtime.GOMAXPROCS(0), 1+len(items)/512)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			opts := proto.MarshalOptions{Deterministic: true}
			for i := w; i < len(items); i += workers {
				it := &items[i]
				b, err := opts.Marshal(it.msg)
				if err != nil {
					it.err = err
					continue
				}
				if old, ok := prev[it.name]; ok && bytes.Equal(old.body, b) {
					// Unchanged, under a new pointer: share the bytes,
					// remember the pointer.
					it.res = &resource{body: old.body, version: old.version, msg: it.msg}
					it.same = true
					continue
				}
				it.res = &resource{body: b, version: version(b), msg: it.msg}
			}
		})
	}
	wg.Wait()
	var names []string
	for _, it := range items {
		if it.err != nil {
			return 0, 0, fmt.Errorf("xds: marshal %s %q: %w", typeURL, it.name, it.err)
		}
		next[it.name] = it.res
		if !it.same {
			names = append(names, it.name)
			changed++
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			names = append(names, name)
			removed++
		}
	}
	if len(names) == 0 {
		if len(items) > 0 {
			// Nothing to push, but keep the new pointers for the next Set.
			s.mu.Lock()
			ts.res = next
			s.mu.Unlock()
		}
		return 0, 0, nil
	}
	slices.Sort(names)
	s.mu.Lock()
	ts.gen = nextGen()
	ts.setAt = start
	ts.res = next
	ts.log = append(ts.log, change{gen: ts.gen, names: names})
	s.compactLocked(ts)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()

	s.metrics.pushes.WithLabelValues(typeURL).Inc()
	s.metrics.setDuration.WithLabelValues(typeURL).Observe(time.Since(start).Seconds())
	return changed, removed, nil
}

// compactLocked drops log entries every stream has been sent.
func (s *Server) compactLocked(ts *typeState) {
	oldest := ts.gen
	for _, st := range s.streams {
		if ts.view != nil && (!st.hasView || st.view != *ts.view) {
			continue // another waypoint's view
		}
		if sub := st.subs[ts.url]; sub != nil && sub.sentGen < oldest {
			oldest = sub.sentGen
		}
	}
	i := sort.Search(len(ts.log), func(i int) bool { return ts.log[i].gen > oldest })
	ts.log = slices.Delete(ts.log, 0, i)
}

// since returns the names changed after generation gen, deduplicated.
func (ts *typeState) since(gen uint64) []string {
	i := sort.Search(len(ts.log), func(i int) bool { return ts.log[i].gen > gen })
	if i == len(ts.log)-1 {
		return ts.log[i].names
	}
	seen := map[string]bool{}
	var out []string
	for _, c := range ts.log[i:] {
		for _, n := range c.names {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// Resources returns the names of typeURL's current resources, sorted.
func (s *Server) Resources(typeURL string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ts := s.types[typeURL]
	if ts == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(ts.res))
}

// version is a resource's version: a hash of its encoding, so that it
// survives restarts and a reconnecting proxy's InitialResourceVersions
// spare it what it already has.
func version(b []byte) string {
	h := fnv.New64a()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func genString(g uint64) string { return strconv.FormatUint(g, 10) }

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) { return maps.Keys(m) }
