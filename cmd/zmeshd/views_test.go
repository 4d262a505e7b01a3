package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/controlplane/xds"
)

const waypointYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.30, selector: {app: api}, ports: [{name: http, port: 80}]}
`

// In directory mode a waypoint that authenticates with its SVID
// (spiffe://cluster.local/ns/shop/sa/waypoint, as the deployer runs it) is
// served its Gateway's clusters on the TLS port, whatever node id it
// claims; another identity is served none.
func TestDirectoryModeServesWaypointViews(t *testing.T) {
	z := startDirectoryMode(t)
	if err := os.WriteFile(filepath.Join(z.dir, "waypoint.yaml"), []byte(waypointYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	clusters := func(sa string) []string {
		t.Helper()
		svid, err := z.ca.Issue(spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/"+sa), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		cc := z.secureConn(t, cert)
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		// The node id claims to be the waypoint, whoever connects.
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "waypoint~10.1.0.9~waypoint-5d8f.shop~shop.svc.cluster.local"}, TypeUrl: xds.TypeCluster}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, res := range r.Resources {
			names = append(names, res.Name)
		}
		return names
	}
	want := []string{"inbound-vip|80|http|api.shop.svc.cluster.local"}
	deadline := time.Now().Add(10 * time.Second)
	for got := clusters("waypoint"); !slices.Equal(got, want); got = clusters("waypoint") {
		if time.Now().After(deadline) {
			t.Fatalf("waypoint identity: clusters %v, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := clusters("web"); len(got) != 0 {
		t.Errorf("identity shop/web claiming the waypoint's node id: clusters %v, want none", got)
	}
}
