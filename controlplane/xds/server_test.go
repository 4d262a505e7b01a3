package xds

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/identity"
)

func serve(t *testing.T, s *Server, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func wl(name, ip string) proto.Message {
	return &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: "Kubernetes//Pod/ns/" + name, Name: name, Namespace: "ns", Addresses: [][]byte{net.ParseIP(ip).To4()},
	}}}
}

type client struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func subscribe(t *testing.T, ctx context.Context, cc *grpc.ClientConn, node string, types ...string) *client {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range types {
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	return &client{t: t, stream: st}
}

func (c *client) recv() *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	r, err := c.stream.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

func (c *client) ack(r *discoveryv3.DeltaDiscoveryResponse, nack string) {
	c.t.Helper()
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}
	if nack != "" {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func names(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		out = append(out, res.Name)
	}
	slices.Sort(out)
	return out
}

func waitState(t *testing.T, s *Server, typeURL, want string) TypeStatus {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, p := range s.Syncz() {
			for _, ts := range p.Types {
				if ts.TypeURL == typeURL && ts.State == want {
					return ts
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no proxy reached %s for %s: %+v", want, typeURL, s.Syncz())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeltaPushSendsOnlyWhatChanged(t *testing.T) {
	s := New(nil, nil, TypeAddress, TypeAuthorization)
	if _, _, err := s.Set(TypeAddress, map[string]proto.Message{"a": wl("a", "10.0.0.1"), "b": wl("b", "10.0.0.2"), "c": wl("c", "10.0.0.3")}); err != nil {
		t.Fatal(err)
	}
	cc := serve(t, s)
	c := subscribe(t, t.Context(), cc, "ztunnel~node-a", TypeAddress)

	first := c.recv()
	if got := names(first); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("first response carries %v, want a b c", got)
	}
	c.ack(first, "")
	waitState(t, s, TypeAddress, "SYNCED")

	// One changed, one unchanged but re-set, one removed, one added.
	changed, removed, err := s.Set(TypeAddress, map[string]proto.Message{"a": wl("a", "10.0.0.9"), "b": wl("b", "10.0.0.2"), "d": wl("d", "10.0.0.4")})
	if err != nil || changed != 2 || removed != 1 {
		t.Fatalf("Set = %d changed, %d removed, %v; want 2, 1", changed, removed, err)
	}
	second := c.recv()
	if got := names(second); !slices.Equal(got, []string{"a", "d"}) || !slices.Equal(second.RemovedResources, []string{"c"}) {
		t.Fatalf("second response: updated %v removed %v; want [a d] and [c]", got, second.RemovedResources)
	}
	if waitState(t, s, TypeAddress, "STALE").SentVersion != second.SystemVersionInfo {
		t.Errorf("syncz sent version is not the response's")
	}
	c.ack(second, "")
	ts := waitState(t, s, TypeAddress, "SYNCED")
	t.Logf("after one change: sent %d resources, removed %d; proxy acked version %s", len(second.Resources), len(second.RemovedResources), ts.AckedVersion)

	// Setting the same set again pushes nothing.
	if changed, removed, _ := s.Set(TypeAddress, map[string]proto.Message{"a": wl("a", "10.0.0.9"), "b": wl("b", "10.0.0.2"), "d": wl("d", "10.0.0.4")}); changed+removed != 0 {
		t.Errorf("an identical set changed %d, removed %d", changed, removed)
	}
}

func TestNackIsRecorded(t *testing.T) {
	s := New(nil, nil, TypeAddress, TypeAuthorization)
	s.Set(TypeAuthorization, map[string]proto.Message{"a": wl("a", "10.0.0.1")})
	c := subscribe(t, t.Context(), serve(t, s), "ztunnel~node-b", TypeAuthorization)
	r := c.recv()
	c.ack(r, `resource "a": not an Authorization`)
	ts := waitState(t, s, TypeAuthorization, "NACKED")
	if !strings.Contains(ts.Error, "not an Authorization") || ts.AckedVersion != "" {
		t.Errorf("NACK recorded as %+v", ts)
	}
	// A later good response clears it.
	s.Set(TypeAuthorization, map[string]proto.Message{})
	r = c.recv()
	c.ack(r, "")
	waitState(t, s, TypeAuthorization, "SYNCED")
}

// serveAuthenticated serves one workload address to clients holding the
// static token "sekrit", which names node-a's ztunnel.
func serveAuthenticated(t *testing.T) (*Server, *grpc.ClientConn) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authn, err := identity.ParseStaticTokens(strings.NewReader("sekrit spiffe://cluster.local/ns/istio-system/sa/ztunnel node-a\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, nil, TypeAddress)
	s.Set(TypeAddress, map[string]proto.Message{"a": wl("a", "10.0.0.1")})
	return s, serve(t, s, grpc.StreamInterceptor(Authenticate(authn, td)))
}

func TestAuthenticateTLSPortNeedsACredential(t *testing.T) {
	s, cc := serveAuthenticated(t)

	for _, tc := range []struct {
		name, token string
		want        codes.Code
	}{
		{"no token", "", codes.Unauthenticated},
		{"wrong token", "nope", codes.Unauthenticated},
		{"good token", "sekrit", codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			}
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~node-a"}, TypeUrl: TypeAddress})
			_, err = st.Recv()
			if got := grpcstatus.Code(err); got != tc.want {
				t.Fatalf("Recv: %v (code %v), want %v", err, got, tc.want)
			}
			if tc.want != codes.OK {
				return
			}
			// While the stream is open (the subtest's context ends it),
			// syncz names the identity the token stands for.
			var principals []string
			for _, p := range s.Syncz() {
				principals = append(principals, p.Principal)
			}
			if !slices.Contains(principals, "spiffe://cluster.local/ns/istio-system/sa/ztunnel") {
				t.Errorf("syncz principals %v lack the token's identity", principals)
			}
		})
	}
}

// TestSetSkipsTheSamePointer: Set encodes a message only when it is not
// the very pointer it was given last time; an equal message under a new
// pointer is encoded and found unchanged.
func TestSetSkipsTheSamePointer(t *testing.T) {
	s := New(nil, nil, TypeAddress)
	a, b := wl("a", "10.0.0.1"), wl("b", "10.0.0.2")
	set := func(res map[string]proto.Message) (changed, removed int) {
		t.Helper()
		changed, removed, err := s.Set(TypeAddress, res)
		if err != nil {
			t.Fatal(err)
		}
		return changed, removed
	}
	if c, r := set(map[string]proto.Message{"a": a, "b": b}); c != 2 || r != 0 {
		t.Fatalf("first Set: %d changed, %d removed", c, r)
	}
	// Equal, new pointers: encoded, unchanged.
	a2, b2 := proto.Clone(a), proto.Clone(b)
	if c, r := set(map[string]proto.Message{"a": a2, "b": b2}); c != 0 || r != 0 {
		t.Fatalf("equal messages: %d changed, %d removed", c, r)
	}
	// The same pointer is not looked at again: a message modified in
	// place (which callers must not do) shows it was not encoded. The new
	// pointers of the last Set are the ones remembered.
	a2.(*workload.Address).GetWorkload().Name = "modified"
	if c, _ := set(map[string]proto.Message{"a": a2, "b": b2}); c != 0 {
		t.Fatalf("same pointers: %d changed, want 0", c)
	}
	// A new pointer with new content is pushed; a missing name removed.
	if c, r := set(map[string]proto.Message{"a": wl("a", "10.0.0.9")}); c != 1 || r != 1 {
		t.Fatalf("changed a, removed b: %d changed, %d removed", c, r)
	}
}

// Both node-id forms show in syncz with the node they name; the identity
// shown as Principal is the token's, whatever the node claims.
func TestSynczReadsBothNodeForms(t *testing.T) {
	s, cc := serveAuthenticated(t)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer sekrit")
	istio := "ztunnel~10.244.1.7~ztunnel-x7k2p.kube-system~kube-system.svc.cluster.local"
	for _, n := range []*corev3.Node{
		{Id: "ztunnel~node-a"},
		// Claims another node and another pod than the token's: shown as
		// claimed, trusted for nothing.
		node(istio, map[string]any{"NAME": "ztunnel-x7k2p", "NAMESPACE": "kube-system", "INSTANCE_IPS": "10.244.1.7",
			"NODE_NAME": "node-b", "CLUSTER_ID": "Kubernetes"}),
	} {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: TypeAddress}); err != nil {
			t.Fatal(err)
		}
		if r, err := st.Recv(); err != nil || len(r.Resources) != 1 {
			t.Fatalf("node %q: %v, %v", n.Id, r, err)
		}
	}
	got := map[string]ProxyStatus{}
	for _, p := range s.Syncz() {
		got[p.ID] = p
	}
	zm, is := got["ztunnel~node-a"], got[istio]
	if zm.Kind != "ztunnel" || zm.Node != "node-a" {
		t.Errorf("zmesh form in syncz: %+v, want kind ztunnel, node node-a", zm)
	}
	if is.Kind != "ztunnel" || is.Node != "node-b" || is.Pod != "ztunnel-x7k2p" || is.Namespace != "kube-system" ||
		!slices.Equal(is.IPs, []string{"10.244.1.7"}) || is.Cluster != "Kubernetes" {
		t.Errorf("Istio form in syncz: %+v", is)
	}
	for _, p := range []ProxyStatus{zm, is} {
		if p.Principal != "spiffe://cluster.local/ns/istio-system/sa/ztunnel" {
			t.Errorf("%s: principal %q, want the token's identity", p.ID, p.Principal)
		}
	}
}

// A proxy that reconnects to a zmeshd which has not loaded the mesh yet
// (just restarted) is not told to drop what it holds: its first answer
// waits for the first Set, and then removes only what the mesh no longer
// has and sends only what changed.
func TestReconnectBeforeFirstSetWaits(t *testing.T) {
	s := New(nil, nil, TypeAddress, TypeAuthorization)
	cc := serve(t, s)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// What the proxy held from the zmeshd before: a and b as they were,
	// and gone, which the mesh lost while zmeshd was down.
	held := map[string]string{}
	for name, m := range map[string]proto.Message{"a": wl("a", "10.0.0.1"), "b": wl("b", "10.0.0.2"), "gone": wl("gone", "10.0.0.3")} {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		held[name] = version(b)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~node-a"}, TypeUrl: TypeAddress, InitialResourceVersions: held}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *discoveryv3.DeltaDiscoveryResponse, 1)
	go func() {
		if r, err := st.Recv(); err == nil {
			got <- r
		}
	}()
	select {
	case r := <-got:
		t.Fatalf("answered before the mesh was loaded: %d resources, removed %v", len(r.Resources), r.RemovedResources)
	case <-time.After(300 * time.Millisecond):
	}

	if _, _, err := s.Set(TypeAddress, map[string]proto.Message{"a": wl("a", "10.0.0.1"), "b": wl("b", "10.0.0.9"), "new": wl("new", "10.0.0.4")}); err != nil {
		t.Fatal(err)
	}
	var r *discoveryv3.DeltaDiscoveryResponse
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer after the first Set")
	}
	if n := names(r); !slices.Equal(n, []string{"b", "new"}) || !slices.Equal(r.RemovedResources, []string{"gone"}) {
		t.Fatalf("first answer: sent %v removed %v; want [b new] (a is held as it is) and [gone]", n, r.RemovedResources)
	}

	// A type whose first Set is empty is loaded all the same.
	c := subscribe(t, t.Context(), cc, "ztunnel~node-b", TypeAuthorization)
	if _, _, err := s.Set(TypeAuthorization, map[string]proto.Message{}); err != nil {
		t.Fatal(err)
	}
	if r := c.recv(); len(r.Resources)+len(r.RemovedResources) != 0 {
		t.Fatalf("empty mesh: answer carries %d resources, removes %v", len(r.Resources), r.RemovedResources)
	}
}
