package xds

import (
	"cmp"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// stream is what the server knows of one connected proxy. Its fields are
// guarded by the server's mu.
type stream struct {
	id int64
	// node is what the proxy's first request said of itself: shown, never
	// trusted (principal is who it authenticated as).
	node      *NodeInfo
	peer      string
	principal string
	// view is the waypoint whose Envoy resources the proxy is served,
	// derived from principal alone (see ViewKey).
	view    ViewKey
	hasView bool
	// peerIP is the connection's peer address, which places a waypoint
	// pod in its locality's view.
	peerIP netip.Addr
	since  time.Time
	subs   map[string]*subscription
	nonce  int64
}

// subscription is one type a stream subscribed to.
type subscription struct {
	// names is nil for a wildcard subscription, else the names asked for.
	names map[string]bool
	// from is the view a view type was last sent from; when the stream's
	// view changes, the new view is sent whole.
	from    *ViewKey
	sentGen uint64 // every change up to this generation has been sent

	sentNonce, sentVersion string
	sentAt                 time.Time
	ackedVersion           string
	ackedAt                time.Time
	nack, nackedVersion    string
	// pending maps nonces not yet answered to the version they carried.
	pending map[string]string
	// deferred marks a subscription made before its type's first Set: its
	// first response waits for it, with have, the versions the proxy said
	// it holds, so that what the proxy holds and the mesh no longer has
	// is removed then, not before.
	deferred bool
	have     map[string]string
}

func (sub *subscription) wants(name string) bool { return sub.names == nil || sub.names[name] }

// DeltaAggregatedResources serves one proxy's stream.
func (s *Server) DeltaAggregatedResources(gs grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	ctx := gs.Context()
	st := &stream{since: time.Now(), subs: map[string]*subscription{}, principal: principalFrom(ctx)}
	st.view, st.hasView = ViewOf(st.principal)
	if p, ok := peer.FromContext(ctx); ok {
		st.peer = p.Addr.String()
		if ap, err := netip.ParseAddrPort(st.peer); err == nil {
			st.peerIP = ap.Addr().Unmap()
		}
	}
	s.mu.Lock()
	st.view = s.viewForLocked(st)
	s.nextID++
	st.id = s.nextID
	s.streams[st.id] = st
	n := len(s.streams)
	s.mu.Unlock()
	s.metrics.connected.Set(float64(n))
	defer func() {
		s.mu.Lock()
		delete(s.streams, st.id)
		n := len(s.streams)
		s.mu.Unlock()
		s.metrics.connected.Set(float64(n))
		if st.node != nil {
			s.log.Info("proxy disconnected", "id", st.node.ID, "peer", st.peer)
		}
	}()

	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := gs.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		s.mu.RLock()
		changed := s.changed
		s.mu.RUnlock()
		// Send what changed since each subscription's last response.
		for _, resp := range s.pending(st) {
			if err := s.send(gs, st, resp); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-reqs:
			resps, err := s.handle(st, req)
			if err != nil {
				return err
			}
			for _, resp := range resps {
				if err := s.send(gs, st, resp); err != nil {
					return err
				}
			}
		case <-changed:
		}
	}
}

// handle takes one request: the first names the node; each is an ACK or
// NACK of a response, or a (re)subscription, or both.
func (s *Server) handle(st *stream, req *discoveryv3.DeltaDiscoveryRequest) ([]*discoveryv3.DeltaDiscoveryResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.typeOfLocked(st, req.GetTypeUrl())
	if ts == nil {
		served := slices.Concat(slices.Collect(mapsKeys(s.types)), slices.Collect(mapsKeys(s.viewTypes)))
		slices.Sort(served)
		return nil, status.Errorf(codes.InvalidArgument, "xds: type %q is not served (served: %v)", req.GetTypeUrl(), served)
	}
	if st.node == nil && req.GetNode() != nil {
		n := ParseNode(req.GetNode())
		st.node = &n
		s.log.Info("proxy connected", "id", n.ID, "node", n.Node, "peer", st.peer, "principal", st.principal)
	}
	sub := st.subs[ts.url]
	if nonce := req.GetResponseNonce(); nonce != "" && sub != nil {
		s.answeredLocked(st, sub, ts.url, nonce, req)
		if len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 {
			return nil, nil
		}
	}
	if sub == nil {
		sub = &subscription{pending: map[string]string{}}
		if names := req.GetResourceNamesSubscribe(); len(names) > 0 && !slices.Contains(names, "*") {
			if len(names) > maxSubscribedNames {
				return nil, tooManyNames(ts.url)
			}
			sub.names = map[string]bool{}
			for _, n := range names {
				sub.names[n] = true
			}
		}
		st.subs[ts.url] = sub
		have := req.GetInitialResourceVersions()
		if !s.viewTypes[ts.url] && !ts.loaded {
			// zmeshd has just started and not yet built the mesh: an
			// answer now would tell a reconnecting proxy to drop all it
			// has. It gets its first answer once the type is loaded.
			sub.deferred, sub.have = true, have
			return nil, nil
		}
		return []*discoveryv3.DeltaDiscoveryResponse{s.initialLocked(st, ts, sub, have)}, nil
	}
	// Changes to an explicit subscription.
	if sub.names == nil {
		return nil, nil // wildcard already has everything
	}
	var added []string
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			sub.names = nil
			added = slices.Collect(mapsKeys(ts.res))
			break
		}
		if !sub.names[n] {
			if len(sub.names) >= maxSubscribedNames {
				return nil, tooManyNames(ts.url)
			}
			sub.names[n] = true
			added = append(added, n)
		}
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if sub.names != nil {
			delete(sub.names, n)
		}
	}
	if len(added) == 0 || sub.deferred {
		return nil, nil // a deferred subscription's first answer covers them
	}
	return []*discoveryv3.DeltaDiscoveryResponse{s.responseLocked(st, ts, sub, slices.Values(added), nil)}, nil
}

// maxSubscribedNames bounds the names one subscription may list, which
// the server holds for as long as the stream: a waypoint asks for one
// route configuration per HTTP port and one load assignment per cluster.
const maxSubscribedNames = 1 << 16

// initialLocked is a new subscription's first response: everything that
// matches, less what the proxy says it already has at the same version,
// and the removal of what it has that the mesh does not.
func (s *Server) initialLocked(st *stream, ts *typeState, sub *subscription, have map[string]string) *discoveryv3.DeltaDiscoveryResponse {
	// Removing what the proxy says it has is right against a live view
	// only: a waypoint reconnecting to a zmeshd that has not built its
	// view yet (just restarted) keeps its configuration.
	removeStale := true
	if s.viewTypes[ts.url] {
		if why := s.noViewReasonLocked(st); why != "" {
			s.log.Warn("no waypoint resources for proxy", "id", st.nodeID(), "principal", st.principal, "type", ts.url, "reason", why)
			removeStale = false
		}
	}
	return s.responseLocked(st, ts, sub, func(yield func(string) bool) {
		for name := range ts.res {
			if !yield(name) {
				return
			}
		}
		for name := range have {
			if !removeStale {
				return
			}
			if _, ok := ts.res[name]; !ok && !yield(name) {
				return
			}
		}
	}, have)
}

func tooManyNames(url string) error {
	return status.Errorf(codes.ResourceExhausted, "xds: subscription to %s lists more than %d names", url, maxSubscribedNames)
}

// pending builds the responses carrying changes st has not been sent.
func (s *Server) pending(st *stream) []*discoveryv3.DeltaDiscoveryResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*discoveryv3.DeltaDiscoveryResponse
	for url, sub := range st.subs {
		ts := s.typeOfLocked(st, url)
		if sub.deferred {
			if ts.loaded {
				out = append(out, s.initialLocked(st, ts, sub, sub.have))
				sub.deferred, sub.have = false, nil
			}
			continue
		}
		if ts.view != nil && sub.from != nil && *sub.from != *ts.view {
			// The stream moved to another view: send it whole, and
			// remove what only the old one had.
			names := slices.Collect(mapsKeys(ts.res))
			if vs := s.views[*sub.from]; vs != nil && vs.types[url] != nil {
				for n := range vs.types[url].res {
					if _, ok := ts.res[n]; !ok {
						names = append(names, n)
					}
				}
			}
			slices.Sort(names)
			out = append(out, s.responseLocked(st, ts, sub, slices.Values(names), nil))
			continue
		}
		if sub.sentGen >= ts.gen {
			continue
		}
		var names []string
		for _, n := range ts.since(sub.sentGen) {
			if sub.wants(n) {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			sub.sentGen = ts.gen
			continue
		}
		out = append(out, s.responseLocked(st, ts, sub, slices.Values(names), nil))
	}
	return out
}

// responseLocked builds a response for names (present ones are sent,
// absent ones removed), skipping those the proxy has at the same version,
// and marks the subscription sent up to the type's generation.
func (s *Server) responseLocked(st *stream, ts *typeState, sub *subscription, names func(func(string) bool), have map[string]string) *discoveryv3.DeltaDiscoveryResponse {
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: ts.url, SystemVersionInfo: genString(ts.gen)}
	for name := range names {
		if !sub.wants(name) {
			continue
		}
		r, ok := ts.res[name]
		switch {
		case !ok:
			resp.RemovedResources = append(resp.RemovedResources, name)
		case have[name] == r.version:
			// the proxy has it
		default:
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{
				Name: name, Version: r.version, Resource: &anypb.Any{TypeUrl: ts.url, Value: r.body},
			})
		}
	}
	st.nonce++
	resp.Nonce = strconv.FormatInt(st.nonce, 10)
	sub.sentGen = ts.gen
	if ts.view != nil {
		v := *ts.view
		sub.from = &v
	}
	sub.sentNonce, sub.sentVersion, sub.sentAt = resp.Nonce, resp.SystemVersionInfo, time.Now()
	sub.pending[resp.Nonce] = resp.SystemVersionInfo
	if !ts.setAt.IsZero() {
		s.metrics.pushLatency.WithLabelValues(ts.url).Observe(time.Since(ts.setAt).Seconds())
	}
	return resp
}

func (s *Server) send(gs grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse], st *stream, resp *discoveryv3.DeltaDiscoveryResponse) error {
	if err := gs.Send(resp); err != nil {
		return err
	}
	s.metrics.responses.WithLabelValues(resp.TypeUrl).Inc()
	return nil
}

func (st *stream) nodeID() string {
	if st.node == nil {
		return ""
	}
	return st.node.ID
}

// answeredLocked records an ACK or NACK of nonce.
func (s *Server) answeredLocked(st *stream, sub *subscription, url, nonce string, req *discoveryv3.DeltaDiscoveryRequest) {
	version, ok := sub.pending[nonce]
	if !ok {
		return
	}
	// Requests answer responses in order: older nonces are answered too.
	n, _ := strconv.ParseInt(nonce, 10, 64)
	for p := range sub.pending {
		if q, _ := strconv.ParseInt(p, 10, 64); q <= n {
			delete(sub.pending, p)
		}
	}
	if e := req.GetErrorDetail(); e != nil {
		sub.nack, sub.nackedVersion = e.GetMessage(), version
		s.metrics.nacks.WithLabelValues(url).Inc()
		s.log.Warn("proxy rejected config", "id", st.nodeID(), "principal", st.principal, "type", url, "version", version, "error", e.GetMessage())
		return
	}
	sub.ackedVersion, sub.ackedAt, sub.nack = version, time.Now(), ""
}

// ProxyStatus is one connected proxy, as /debug/syncz lists it.
type ProxyStatus struct {
	// NodeInfo is what the proxy's node id and metadata claim (flattened
	// in JSON); Principal is who it authenticated as.
	NodeInfo

	Peer      string `json:"peer,omitempty"`
	Principal string `json:"principal,omitempty"`
	// Waypoint is the Gateway whose view the principal selects, if there
	// is one.
	Waypoint string       `json:"waypoint,omitempty"`
	Since    time.Time    `json:"connectedSince"`
	Types    []TypeStatus `json:"types"`
}

// TypeStatus is one subscription's sync state.
type TypeStatus struct {
	TypeURL string `json:"typeUrl"`
	// ServerVersion is the server's current version of the type; the proxy
	// is SYNCED when it has acked that version.
	ServerVersion string    `json:"serverVersion"`
	SentVersion   string    `json:"sentVersion,omitempty"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	AckedVersion  string    `json:"ackedVersion,omitempty"`
	AckedAt       time.Time `json:"ackedAt,omitzero"`
	// State is SYNCED, NOT SENT (nothing sent since it subscribed), STALE
	// (the last response is not acked yet, or the server has moved on) or
	// NACKED (the proxy rejected its last response: Error says why).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Syncz lists the connected proxies by id.
func (s *Server) Syncz() []ProxyStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ProxyStatus, 0, len(s.streams))
	for _, st := range s.streams {
		ps := ProxyStatus{Peer: st.peer, Principal: st.principal, Since: st.since}
		if vs := s.views[st.view]; st.hasView && vs != nil && vs.live {
			ps.Waypoint = st.view.String()
		}
		if n := st.node; n != nil {
			ps.NodeInfo = *n
		}
		for url, sub := range st.subs {
			typ := s.typeOfLocked(st, url)
			server := genString(typ.gen)
			ts := TypeStatus{
				TypeURL: url, ServerVersion: server,
				SentVersion: sub.sentVersion, SentAt: sub.sentAt,
				AckedVersion: sub.ackedVersion, AckedAt: sub.ackedAt,
			}
			switch {
			case sub.nack != "" && sub.nackedVersion == sub.sentVersion:
				ts.State, ts.Error = "NACKED", sub.nack
			case sub.sentNonce == "":
				ts.State = "NOT SENT"
			case sub.sentGen == typ.gen && sub.ackedVersion == sub.sentVersion && len(sub.pending) == 0:
				ts.State = "SYNCED"
			default:
				ts.State = "STALE"
			}
			if s.viewTypes[url] && ts.Error == "" {
				ts.Error = s.noViewReasonLocked(st)
			}
			ps.Types = append(ps.Types, ts)
		}
		slices.SortFunc(ps.Types, func(a, b TypeStatus) int { return cmp.Compare(a.TypeURL, b.TypeURL) })
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return cmp.Or(cmp.Compare(a.ID, b.ID), a.Since.Compare(b.Since)) })
	return out
}
