package xds

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/zmesh/zmesh/identity"
)

// cluster is a Cluster whose content varies with seconds.
func cluster(name string, seconds int64) proto.Message {
	return &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(time.Duration(seconds) * time.Second)}
}

func cla(name string) proto.Message { return &endpointv3.ClusterLoadAssignment{ClusterName: name} }

// viewServer serves ztunnel types and per-waypoint Envoy types on a port
// that authenticates with bearer tokens: "tok-a" is waypoint ns-a/wp-a,
// "tok-b" is waypoint ns-b/wp-b, "tok-c" an identity with no Gateway.
func viewServer(t *testing.T) (*Server, *grpc.ClientConn) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authn, err := identity.ParseStaticTokens(strings.NewReader(
		"tok-a spiffe://cluster.local/ns/ns-a/sa/wp-a node-1\n" +
			"tok-b spiffe://cluster.local/ns/ns-b/sa/wp-b node-1\n" +
			"tok-c spiffe://cluster.local/ns/ns-c/sa/app node-1\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, nil, TypeAddress)
	if err := s.ServeViews(EnvoyTypes...); err != nil {
		t.Fatal(err)
	}
	return s, serve(t, s, grpc.StreamInterceptor(Authenticate(authn, td)))
}

// subscribeAs opens a stream with token, claiming node id node, and sends
// one subscription per request.
func subscribeAs(t *testing.T, cc *grpc.ClientConn, token, node string, reqs ...*discoveryv3.DeltaDiscoveryRequest) *client {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		r.Node = &corev3.Node{Id: node}
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	return &client{t: t, stream: st}
}

func twoViews() map[ViewKey]View {
	return map[ViewKey]View{
		{Namespace: "ns-a", Name: "wp-a"}: {
			TypeCluster:  {"a-1": cluster("a-1", 1), "a-2": cluster("a-2", 1)},
			TypeEndpoint: {"a-1": cla("a-1"), "a-2": cla("a-2")},
		},
		{Namespace: "ns-b", Name: "wp-b"}: {
			TypeCluster:  {"b-1": cluster("b-1", 1)},
			TypeEndpoint: {"b-1": cla("b-1")},
		},
	}
}

// TestViewFollowsIdentityNotNodeID: a waypoint authenticated as ns-a/wp-a
// that claims wp-b's node id is sent wp-a's resources only.
func TestViewFollowsIdentityNotNodeID(t *testing.T) {
	s, cc := viewServer(t)
	if _, _, err := s.SetViews(twoViews()); err != nil {
		t.Fatal(err)
	}
	c := subscribeAs(t, cc, "tok-a", "waypoint~10.0.0.9~wp-b-5d8f.ns-b~ns-b.svc.cluster.local",
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	r := c.recv()
	if got := names(r); !slices.Equal(got, []string{"a-1", "a-2"}) {
		t.Fatalf("clusters sent to ns-a/wp-a claiming wp-b's node: %v, want [a-1 a-2]", got)
	}
	c.ack(r, "")
	// Endpoints by name: one of its own, one of the other waypoint's.
	c2 := subscribeAs(t, cc, "tok-a", "waypoint~x~wp-b.ns-b~ns-b.svc.cluster.local",
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: []string{"a-2", "b-1"}})
	if got := names(c2.recv()); !slices.Equal(got, []string{"a-2"}) {
		t.Fatalf("endpoints a-2 and b-1 asked by ns-a/wp-a: sent %v, want [a-2]", got)
	}
	for _, p := range s.Syncz() {
		if p.Waypoint != "ns-a/wp-a" {
			t.Errorf("syncz: proxy %s served waypoint %q, want ns-a/wp-a", p.ID, p.Waypoint)
		}
	}
}

// TestViewWithoutGateway: an identity with no waypoint Gateway gets no
// Envoy resources, and syncz says why; its ztunnel types are unaffected.
func TestViewWithoutGateway(t *testing.T) {
	s, cc := viewServer(t)
	s.SetViews(twoViews())
	s.Set(TypeAddress, map[string]proto.Message{"w": wl("w", "10.0.0.1")})
	c := subscribeAs(t, cc, "tok-c", "waypoint~ns-a~wp-a",
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAddress})
	for range 2 {
		r := c.recv()
		switch r.TypeUrl {
		case TypeCluster:
			if len(r.Resources) != 0 {
				t.Errorf("identity without a Gateway was sent clusters %v", names(r))
			}
		case TypeAddress:
			if got := names(r); !slices.Equal(got, []string{"w"}) {
				t.Errorf("addresses %v, want [w]", got)
			}
		}
	}
	ts := waitState(t, s, TypeCluster, "STALE")
	if !strings.Contains(ts.Error, "no istio-waypoint Gateway ns-c/app") {
		t.Errorf("syncz error %q does not say the Gateway is missing", ts.Error)
	}
}

// TestViewDelta: a change to a view sends its proxies the changed and
// removed resources only, each versioned by its content; other views'
// proxies get nothing; a Gateway that goes away has its resources
// removed; a NACK's detail shows in syncz.
func TestViewDelta(t *testing.T) {
	s, cc := viewServer(t)
	views := twoViews()
	s.SetViews(views)
	a := subscribeAs(t, cc, "tok-a", "a", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	b := subscribeAs(t, cc, "tok-b", "b", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	ra, rb := a.recv(), b.recv()
	a.ack(ra, "")
	b.ack(rb, "")
	versions := map[string]string{}
	for _, r := range ra.Resources {
		versions[r.Name] = r.Version
	}

	// a-1 changes, a-2 is the same content under a new pointer, a-3 new.
	views[ViewKey{Namespace: "ns-a", Name: "wp-a"}][TypeCluster] = map[string]proto.Message{"a-1": cluster("a-1", 2), "a-2": cluster("a-2", 1), "a-3": cluster("a-3", 1)}
	if changed, removed, err := s.SetViews(views); err != nil || changed != 2 || removed != 0 {
		t.Fatalf("SetViews = %d changed, %d removed, %v; want 2, 0", changed, removed, err)
	}
	r := a.recv()
	if got := names(r); !slices.Equal(got, []string{"a-1", "a-3"}) || len(r.RemovedResources) != 0 {
		t.Fatalf("after a change: sent %v removed %v, want [a-1 a-3] and none", got, r.RemovedResources)
	}
	for _, res := range r.Resources {
		if res.Name == "a-1" && (res.Version == versions["a-1"] || res.Version != version(res.Resource.Value)) {
			t.Errorf("a-1 version %q: want the hash of its new bytes", res.Version)
		}
	}
	a.ack(r, "cluster a-3: spec.lbPolicy: MAGLEV is not supported")
	ts := waitState(t, s, TypeCluster, "NACKED")
	if !strings.Contains(ts.Error, "spec.lbPolicy") {
		t.Errorf("syncz NACK error %q lacks the field path", ts.Error)
	}

	// The Gateway of wp-a goes away: its proxies are told to drop all.
	delete(views, ViewKey{Namespace: "ns-a", Name: "wp-a"})
	s.SetViews(views)
	r = a.recv()
	slices.Sort(r.RemovedResources)
	if !slices.Equal(r.RemovedResources, []string{"a-1", "a-2", "a-3"}) || len(r.Resources) != 0 {
		t.Fatalf("after the Gateway went: sent %v removed %v, want all removed", names(r), r.RemovedResources)
	}

	// wp-b's proxy was sent nothing by any of this: its next response is
	// its own view's change.
	got := make(chan *discoveryv3.DeltaDiscoveryResponse, 1)
	go func() {
		if r, err := b.stream.Recv(); err == nil {
			got <- r
		}
	}()
	views[ViewKey{Namespace: "ns-b", Name: "wp-b"}][TypeCluster] = map[string]proto.Message{"b-2": cluster("b-2", 1)}
	s.SetViews(views)
	r = <-got
	if !slices.Equal(names(r), []string{"b-2"}) || !slices.Equal(r.RemovedResources, []string{"b-1"}) {
		t.Fatalf("wp-b's proxy got %v removed %v, want its own change only (b-2, b-1 removed)", names(r), r.RemovedResources)
	}
}

func TestViewOf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ViewKey
		ok   bool
	}{
		{"spiffe://cluster.local/ns/default/sa/waypoint", ViewKey{Namespace: "default", Name: "waypoint"}, true},
		{"spiffe://td/ns/a/sa/b/extra", ViewKey{}, false},
		{"spiffe://td/sa/b/ns/a", ViewKey{}, false},
		{"", ViewKey{}, false},
		{"not a uri", ViewKey{}, false},
	} {
		got, ok := ViewOf(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ViewOf(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// A waypoint that reconnects before its view is built (zmeshd just
// restarted) keeps what it has; once the view is built it gets it, and a
// name it had that the view lacks is removed then.
func TestViewReconnectBeforeBuild(t *testing.T) {
	s, cc := viewServer(t)
	c := subscribeAs(t, cc, "tok-a", "a", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster,
		InitialResourceVersions: map[string]string{"a-1": "old", "gone": "old"}})
	r := c.recv()
	if len(r.Resources) != 0 || len(r.RemovedResources) != 0 {
		t.Fatalf("before any view: sent %v removed %v, want nothing", names(r), r.RemovedResources)
	}
	c.ack(r, "")
	s.SetViews(twoViews())
	r = c.recv()
	if !slices.Equal(names(r), []string{"a-1", "a-2"}) {
		t.Fatalf("once built: sent %v, want [a-1 a-2]", names(r))
	}
	// A fresh stream against the live view has its stale name removed.
	c2 := subscribeAs(t, cc, "tok-a", "a", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster,
		InitialResourceVersions: map[string]string{"gone": "old"}})
	if r := c2.recv(); !slices.Equal(r.RemovedResources, []string{"gone"}) {
		t.Fatalf("against the live view: removed %v, want [gone]", r.RemovedResources)
	}
}

// A subscription may not make the server hold unbounded names.
func TestViewSubscriptionNamesAreBounded(t *testing.T) {
	_, cc := viewServer(t)
	many := make([]string, maxSubscribedNames+1)
	for i := range many {
		many[i] = strconv.Itoa(i)
	}
	c := subscribeAs(t, cc, "tok-a", "a", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: many[:10]})
	c.recv()
	for i := 10; i < len(many); i += 10000 {
		c.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: many[i:min(i+10000, len(many))]})
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := c.stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		if grpcstatus.Code(err) != codes.ResourceExhausted {
			t.Fatalf("stream ended with %v, want ResourceExhausted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the server accepted %d names on one subscription", len(many))
	}
}

// syncz names a proxy's waypoint only when its identity has one.
func TestSynczNamesTheWaypoint(t *testing.T) {
	s, cc := viewServer(t)
	s.SetViews(twoViews())
	subscribeAs(t, cc, "tok-c", "c", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster}).recv()
	subscribeAs(t, cc, "tok-b", "b", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster}).recv()
	got := map[string]string{}
	for _, p := range s.Syncz() {
		got[p.Principal] = p.Waypoint
	}
	want := map[string]string{"spiffe://cluster.local/ns/ns-c/sa/app": "", "spiffe://cluster.local/ns/ns-b/sa/wp-b": "ns-b/wp-b"}
	if !maps.Equal(got, want) {
		t.Errorf("syncz waypoints %v, want %v", got, want)
	}
}
