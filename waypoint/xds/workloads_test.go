package xds

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/telemetry"
)

func addressAny(t *testing.T, a *workload.Address) *anypb.Any {
	t.Helper()
	b, err := anypb.New(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func workloadAddr(w *workload.Workload) *workload.Address {
	return &workload.Address{Type: &workload.Address_Workload{Workload: w}}
}

// TestWorkloadDiscovery: with a workload index, the waypoint also
// subscribes to workload discovery; workloads fill the index by address
// with the identity ztunnel would give them (trust domain and service
// account defaulted), services are skipped, removals and a workload turned
// service are forgotten, a malformed address is NACKed, and none of it
// holds back the Envoy snapshot.
func TestWorkloadDiscovery(t *testing.T) {
	idx := telemetry.NewWorkloads(0)
	got := &applied{}
	_, s := connect(t, Options{OnSnapshot: got.add, Workloads: idx, Log: slog.New(slog.DiscardHandler)})
	var types []string
	for range len(Types) + 1 {
		types = append(types, s.next(t).GetTypeUrl())
	}
	if !slices.Contains(types, TypeAddress) {
		t.Fatalf("subscribed to %v, want %s too", types, TypeAddress)
	}

	sleepIP, podIP := netip.MustParseAddr("10.1.1.4"), netip.MustParseAddr("10.1.1.5")
	ack(t, "addresses", s.push(t, TypeAddress, map[string]*anypb.Any{
		"Kubernetes//Pod/ns/sleep": addressAny(t, workloadAddr(&workload.Workload{Uid: "Kubernetes//Pod/ns/sleep", Name: "sleep-6f8",
			Namespace: "ns", ServiceAccount: "sleep", WorkloadName: "sleep", CanonicalName: "sleep", CanonicalRevision: "v1",
			ClusterId: "Kubernetes", Addresses: [][]byte{sleepIP.AsSlice()}})),
		"Kubernetes//Pod/ns/other": addressAny(t, workloadAddr(&workload.Workload{Name: "other", Namespace: "ns",
			TrustDomain: "example.org", Addresses: [][]byte{podIP.AsSlice()}})),
		"ns/a.ns.svc.cluster.local": addressAny(t, &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{
			Name: "a", Namespace: "ns", Hostname: "a.ns.svc.cluster.local"}}}),
	}))
	w, ok := idx.Lookup(sleepIP, "spiffe://cluster.local/ns/ns/sa/sleep")
	if !ok || w.Name != "sleep" || w.CanonicalService != "sleep" || w.CanonicalRevision != "v1" || w.Cluster != "Kubernetes" || w.Namespace != "ns" {
		t.Fatalf("sleep: %+v %v", w, ok)
	}
	if _, ok := idx.Lookup(sleepIP, "spiffe://cluster.local/ns/ns/sa/other"); ok {
		t.Error("sleep's address matched another identity")
	}
	if w, ok := idx.Lookup(podIP, "spiffe://example.org/ns/ns/sa/default"); !ok || w.Name != "other" {
		t.Errorf("a workload without workload_name or service account: %+v %v", w, ok)
	}
	if idx.Len() != 2 {
		t.Errorf("index holds %d, want the 2 workloads", idx.Len())
	}

	nack(t, "bad address", s.push(t, TypeAddress, map[string]*anypb.Any{
		"Kubernetes//Pod/ns/bad": addressAny(t, workloadAddr(&workload.Workload{Name: "bad", Namespace: "ns", Addresses: [][]byte{{1, 2, 3}}})),
	}), "Kubernetes//Pod/ns/bad: workload.addresses[0]: 3 bytes is not an IP address")

	// sleep goes; other's name now holds a service.
	ack(t, "removal", s.push(t, TypeAddress, map[string]*anypb.Any{
		"Kubernetes//Pod/ns/other": addressAny(t, &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{Name: "x", Namespace: "ns"}}}),
	}, "Kubernetes//Pod/ns/sleep"))
	if idx.Len() != 0 {
		t.Errorf("index holds %d after the removals, want 0", idx.Len())
	}

	// The Envoy types alone make a snapshot.
	ack(t, "clusters", s.push(t, config.TypeCluster, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeCluster, clusterYAML)}))
	ack(t, "endpoints", s.push(t, config.TypeAssignment, map[string]*anypb.Any{clusterName: testutil.AnyYAML(t, config.TypeAssignment, claYAML)}))
	ack(t, "listener", s.push(t, config.TypeListener, map[string]*anypb.Any{"main_internal": testutil.AnyYAML(t, config.TypeListener, listenerYAML(httpChain))}))
	ack(t, "route", s.push(t, config.TypeRoute, map[string]*anypb.Any{httpChain: testutil.AnyYAML(t, config.TypeRoute, routeYAML(httpChain, clusterName))}))
	if n := len(got.list()); n != 1 {
		t.Fatalf("%d snapshots, want 1", n)
	}
}
