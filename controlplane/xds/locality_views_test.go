package xds

import (
	"net/netip"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// TestLocalityViewFollowsAuthenticatedPod: a waypoint whose connection
// comes from an address located in its Gateway's locality view is served
// that view; another Gateway's identity connecting from the same address
// is served its own Gateway's view (an address never lends another
// Gateway's view); when the address is no longer located, the proxy is
// moved to its Gateway's view without locality, sent it whole, with what
// only the locality view had removed.
func TestLocalityViewFollowsAuthenticatedPod(t *testing.T) {
	s, cc := viewServer(t)
	base := ViewKey{Namespace: "ns-a", Name: "wp-a"}
	west := ViewKey{Namespace: "ns-a", Name: "wp-a", Locality: "us-west/zone1/"}
	views := twoViews()
	views[west] = View{
		TypeCluster:  {"a-1": cluster("a-1", 2), "a-2": cluster("a-2", 1), "a-4": cluster("a-4", 1)},
		TypeEndpoint: {"a-1": cla("a-1")},
	}
	loopback := netip.MustParseAddr("127.0.0.1")
	if _, _, err := s.SetLocatedViews(views, map[netip.Addr]ViewKey{loopback: west}); err != nil {
		t.Fatal(err)
	}
	a := subscribeAs(t, cc, "tok-a", "a", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	r := a.recv()
	if got := names(r); !slices.Equal(got, []string{"a-1", "a-2", "a-4"}) {
		t.Fatalf("wp-a's pod in us-west/zone1 was sent %v, want its locality view [a-1 a-2 a-4]", got)
	}
	b1, _ := proto.MarshalOptions{Deterministic: true}.Marshal(cluster("a-1", 2))
	for _, res := range r.Resources {
		if res.Name == "a-1" && res.Version != version(b1) {
			t.Errorf("a-1 is not the locality view's")
		}
	}
	a.ack(r, "")
	b := subscribeAs(t, cc, "tok-b", "b", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	if got := names(b.recv()); !slices.Equal(got, []string{"b-1"}) {
		t.Fatalf("wp-b from wp-a's pod address was sent %v, want its own [b-1]", got)
	}
	waypoints := map[string]bool{}
	for _, p := range s.Syncz() {
		waypoints[p.Waypoint] = true
	}
	if !waypoints[west.String()] || !waypoints["ns-b/wp-b"] {
		t.Errorf("syncz waypoints %v, want %s and ns-b/wp-b", waypoints, west)
	}

	// The pod is no longer located (it moved, or its node lost its
	// labels): the base view, whole.
	if _, _, err := s.SetLocatedViews(views, nil); err != nil {
		t.Fatal(err)
	}
	r = a.recv()
	if got := names(r); !slices.Equal(got, []string{"a-1", "a-2"}) || !slices.Equal(r.RemovedResources, []string{"a-4"}) {
		t.Fatalf("after leaving the locality: sent %v removed %v, want [a-1 a-2] and [a-4]", got, r.RemovedResources)
	}
	b0, _ := proto.MarshalOptions{Deterministic: true}.Marshal(cluster("a-1", 1))
	for _, res := range r.Resources {
		if res.Name == "a-1" && res.Version != version(b0) {
			t.Errorf("a-1 is not the base view's")
		}
	}
	a.ack(r, "")
	if got := s.Views(); !slices.Contains(got, base) {
		t.Errorf("views %v lack %s", got, base)
	}
}
