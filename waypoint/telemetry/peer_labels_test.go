package telemetry

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPeerCanonicalLabels: canonical names and clusters a peer carries
// label both sides as given; without them they are derived (app else
// workload, version else "latest", the mesh's cluster).
func TestPeerCanonicalLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, MetricsOptions{Cluster: "mesh-1"})
	if err != nil {
		t.Fatal(err)
	}
	r := request()
	r.Source.CanonicalService, r.Source.CanonicalRevision, r.Source.Cluster = "frontend", "2024-1", "east"
	r.Destination = Peer{Principal: r.Destination.Principal, Workload: "reviews-v2", Namespace: "default"}
	m.Observe(r)
	if err := gatherContains(reg, `istio_requests_total{connection_security_policy="mutual_tls",destination_app="unknown",destination_canonical_revision="latest",destination_canonical_service="reviews-v2",destination_cluster="mesh-1",destination_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews",destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="default",destination_version="unknown",destination_workload="reviews-v2",destination_workload_namespace="default",grpc_response_status="0",reporter="waypoint",request_protocol="grpc",response_code="200",response_flags="-",source_app="productpage",source_canonical_revision="2024-1",source_canonical_service="frontend",source_cluster="east",source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage",source_version="v1",source_workload="productpage-v1",source_workload_namespace="default"} 1`); err != nil {
		t.Error(err)
	}
}
