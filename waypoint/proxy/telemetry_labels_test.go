package proxy

import (
	"net/netip"
	"testing"

	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// TestSourceLabelsFromWorkloads: a client whose address workload discovery
// names, with the identity the client proved, is labelled with that
// workload; the same address under another identity (a reused pod IP, or a
// client behind NAT) is not believed, and the client keeps only what its
// certificate proves.
func TestSourceLabelsFromWorkloads(t *testing.T) {
	m := newMesh(t, bounds{})
	c := m.h1Client(vipHTTP)
	sleep := telemetry.Workload{Identity: sleepID.String(), Name: "sleep", Namespace: "default",
		CanonicalService: "sleep", CanonicalRevision: "v7", Cluster: "east", Addresses: []netip.Addr{clientIP}}
	for _, tc := range []struct {
		name string
		w    telemetry.Workload
		want telemetry.Peer
	}{
		{"identity matches", sleep, telemetry.Peer{Workload: "sleep", Namespace: "default", App: "sleep", Version: "v7",
			CanonicalService: "sleep", CanonicalRevision: "v7", Cluster: "east"}},
		{"another identity at the client's address", func() telemetry.Workload {
			w := sleep
			w.Identity, w.Name = evilID.String(), "evil"
			return w
		}(), telemetry.Peer{Namespace: "default"}},
		{"the identity at another address", func() telemetry.Workload {
			w := sleep
			w.Addresses = []netip.Addr{netip.MustParseAddr("10.9.9.9")}
			return w
		}(), telemetry.Peer{Namespace: "default"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.workloads.Set("Kubernetes//Pod/default/sleep", tc.w)
			res, _ := get(t, c, "http://reviews/app/x")
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			got := m.obs.next(t).Source
			tc.want.Principal, tc.want.Addr = sleepID.String(), got.Addr
			if got.Addr.Addr() != clientIP {
				t.Errorf("source address %v, want %v", got.Addr, clientIP)
			}
			if got != tc.want {
				t.Errorf("source %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDestinationLabelsFromEndpoint: the chosen endpoint's workload
// metadata labels the destination; an endpoint without it is labelled from
// its labels and identity.
func TestDestinationLabelsFromEndpoint(t *testing.T) {
	e := ep(podV1, 8080, v1ID, "v1")
	if got := destinationPeer(e); got.Workload != "" || got.App != "reviews" || got.Version != "v1" || got.Namespace != "default" {
		t.Errorf("without metadata: %+v", got)
	}
	e.Workload = upstream.WorkloadInfo{Name: "reviews-v1", Namespace: "default", CanonicalService: "reviews-backend",
		CanonicalRevision: "1.2", Cluster: "east", App: "reviews", Version: "v1"}
	want := telemetry.Peer{Principal: v1ID.String(), Addr: e.Addr, Workload: "reviews-v1", Namespace: "default", App: "reviews",
		Version: "v1", CanonicalService: "reviews-backend", CanonicalRevision: "1.2", Cluster: "east"}
	if got := destinationPeer(e); got != want {
		t.Errorf("with metadata: %+v, want %+v", got, want)
	}
}
