package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/zmesh/zmesh/internal/testutil"
)

// buildSet is the contract's listener with its two route configurations,
// one of them routing to a cluster that does not exist.
func buildSet(t *testing.T) Resources {
	rc := func(name, cluster string) *routev3.RouteConfiguration {
		return testutil.ProtoYAML(t, "name: \""+name+"\"\nvirtual_hosts: [{name: vh, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: \""+cluster+"\"}}]}]\n",
			&routev3.RouteConfiguration{})
	}
	return Resources{
		Version:   "v1",
		Listeners: []*listenerv3.Listener{testutil.ProtoYAML(t, istioListener(), &listenerv3.Listener{})},
		Routes:    []*routev3.RouteConfiguration{rc(httpA, "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"), rc(httpB, "no-such-cluster")},
		Clusters:  []*clusterv3.Cluster{parseCluster(t, waypointCluster)},
		Assignments: []*endpointv3.ClusterLoadAssignment{parseCLA(t, "cluster_name: \"inbound-vip|8080|http/v1|reviews.default.svc.cluster.local\"\nendpoints:\n- lb_endpoints:\n"+
			endpointYAML("10.0.0.1", 80, ""))},
	}
}

func TestBuild(t *testing.T) {
	s, err := Build(buildSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != "v1" || len(s.Chains) != 4 || len(s.Routes) != 2 || len(s.Clusters) != 1 || len(s.Assignments) != 1 {
		t.Errorf("snapshot %+v", s)
	}
	if c := s.Chains[netip.MustParseAddrPort("10.96.0.2:8080")]; c == nil || s.Routes[c.RouteConfig] == nil {
		t.Errorf("chain %+v has no compiled route table", c)
	}
	for typ, want := range map[string]string{TypeListener: "main_internal", TypeRoute: httpB, TypeCluster: "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local",
		TypeAssignment: "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"} {
		if s.Resources[typ][want] == nil {
			t.Errorf("Resources[%s] has no %q: %v", typ, want, s.Resources[typ])
		}
	}
}

func TestBuildRefusals(t *testing.T) {
	missing := buildSet(t)
	missing.Routes = missing.Routes[:1]
	_, err := Build(missing)
	var me *MissingRoutesError
	if !errors.As(err, &me) || len(me.Names) != 1 || me.Names[0] != httpB {
		t.Errorf("a chain without its route configuration: %v, want a MissingRoutesError naming %q", err, httpB)
	}

	noClusters := buildSet(t)
	noClusters.Clusters, noClusters.Assignments = nil, nil
	if _, err := Build(noClusters); err != nil {
		t.Errorf("routes and TCP chains naming absent clusters: %v, want a snapshot (Envoy answers 503 NC per request)", err)
	}

	twice := buildSet(t)
	other := testutil.ProtoYAML(t, strings.Replace(istioListener(), "name: main_internal", "name: other", 1), &listenerv3.Listener{})
	other.FilterChains = other.FilterChains[3:]
	twice.Listeners = append(twice.Listeners, other)
	_, err = Build(twice)
	if want := `listeners "other": filter_chains: chain "inbound-vip|9000|tcp|b.ns.svc.cluster.local" matches destination 10.96.0.2:9000, which listener "main_internal" already serves`; err == nil || err.Error() != want {
		t.Errorf("two listeners for one destination: %v, want %s", err, want)
	}

	bad := buildSet(t)
	bad.Routes[1].VirtualHosts[0].RequireTls = routev3.VirtualHost_ALL
	if _, err := Build(bad); err == nil || err.Error() != httpB+": virtual_hosts[0].require_tls: not supported" {
		t.Errorf("a bad route configuration: %v", err)
	}
}
