package config

import (
	"testing"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// TestIstioLocalityLoadBalancing compiles a cluster and assignment as
// istiod shapes them for localityLbSetting and balances over them:
// distribute is locality weights (with locality_weighted_lb_config),
// failover is priorities.
func TestIstioLocalityLoadBalancing(t *testing.T) {
	c, err := CompileCluster(parseCluster(t, "name: c\n"+edsCluster+"lb_policy: ROUND_ROBIN\ncommon_lb_config: {locality_weighted_lb_config: {}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cla := func(zoneAHealth string) string {
		return `
cluster_name: c
endpoints:
- locality: {region: us-east, zone: us-east-1a}
  load_balancing_weight: 80
  lb_endpoints:
` + endpointYAML("10.0.1.1", 9080, zoneAHealth) + endpointYAML("10.0.1.2", 9080, zoneAHealth) + `
- locality: {region: us-east, zone: us-east-1b}
  load_balancing_weight: 20
  lb_endpoints:
` + endpointYAML("10.0.2.1", 9080, "") + `
- locality: {region: eu-west, zone: eu-west-1a}
  load_balancing_weight: 100
  priority: 1
  lb_endpoints:
` + endpointYAML("10.0.3.1", 9080, "")
	}
	shares := func(y string) map[string]float64 {
		a, err := CompileAssignment(parseCLA(t, y))
		if err != nil {
			t.Fatal(err)
		}
		b := upstream.NewBalancer(c, a)
		const n = 10000
		out := map[string]float64{}
		for i := range n {
			h, ok := b.Pick(upstream.PickRequest{Random: uint64(i) * 0x9e3779b97f4a7c15})
			if !ok {
				t.Fatal("no endpoint")
			}
			out[h.Endpoint.Addr.Addr().String()] += 1.0 / n
		}
		return out
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if got < want-0.02 || got > want+0.02 {
			t.Errorf("%s: %.3f, want %.3f", what, got, want)
		}
	}
	// distribute {us-east-1a: 80, us-east-1b: 20}; eu-west is failover.
	got := shares(cla(""))
	near("us-east-1a", got["10.0.1.1"]+got["10.0.1.2"], 0.8)
	near("us-east-1b", got["10.0.2.1"], 0.2)
	near("eu-west (failover)", got["10.0.3.1"], 0)
	// us-east-1a draining: priority 0 keeps 140 % × 1/3 = 46 % (all to
	// us-east-1b, the only locality left with an effective weight), and
	// fails over the rest to eu-west.
	got = shares(cla("      health_status: DRAINING\n"))
	near("us-east-1a draining", got["10.0.1.1"]+got["10.0.1.2"], 0)
	near("us-east-1b", got["10.0.2.1"], 0.46)
	near("eu-west (failover)", got["10.0.3.1"], 0.54)
}
