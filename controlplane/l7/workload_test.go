package l7

import (
	"os"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

// TestWorkloadChainsVerifyTokens: a client that dials a bound pod's address
// instead of a Service's VIP meets the same waypoint-wide token checks. Every
// HTTP chain of a waypoint, Service and workload alike, gets the JWT filter of
// the RequestAuthentications attached to the waypoint's Gateway or
// GatewayClass, before the RBAC filters that read what it verified; without
// it an invalid token would reach the pod and requestPrincipals could never
// match a verified token there.
func TestWorkloadChainsVerifyTokens(t *testing.T) {
	data, err := os.ReadFile("testdata/workload_bound.txtar")
	if err != nil {
		t.Fatal(err)
	}
	input, _ := golden.Parse(data).File("input.yaml")
	snap := modeltest.Decode(t, input)
	workloadChains := 0
	for _, gw := range snap.Gateways {
		res := Build(Options{Mesh: model.DefaultMesh(), JWKS: goldenJWKS}, snap, gw)
		if len(res.Listeners) != 1 {
			t.Fatalf("waypoint %s/%s: %d listeners", gw.Namespace, gw.Name, len(res.Listeners))
		}
		for _, fc := range res.Listeners[0].FilterChains {
			for _, f := range fc.Filters {
				if f.Name != hcmName {
					continue
				}
				hcm := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, hf := range hcm.HttpFilters {
					names = append(names, hf.Name)
				}
				if strings.HasPrefix(fc.Name, "inbound-pod|") {
					workloadChains++
				}
				if len(names) == 0 || names[0] != jwtName {
					t.Errorf("waypoint %s/%s chain %s: HTTP filters %v, want %s first", gw.Namespace, gw.Name, fc.Name, names, jwtName)
				}
			}
		}
	}
	if workloadChains < 3 {
		t.Fatalf("%d workload HTTP chains checked; the input binds pods to both waypoints", workloadChains)
	}
}
