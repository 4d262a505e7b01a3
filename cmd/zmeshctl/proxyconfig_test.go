package main

import (
	"flag"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/zmesh/zmesh/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/*.txtar with the output zmeshctl gives")

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// istioMeta is the metadata istiod puts on resources built from an object.
func istioMeta(t *testing.T, path string) *corev3.Metadata {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{"config": path})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": s}}
}

const (
	reviews = "reviews.bookinfo.svc.cluster.local"
	ratings = "ratings.bookinfo.svc.cluster.local"
)

// waypointDump is the /config_dump of a waypoint serving reviews (HTTP on
// 9080, split over subsets v1 and v2) and ratings (port 9000 sniffed: an
// HTTP chain and a TCP chain), in the shape zmeshd sends waypoints.
func waypointDump(t *testing.T) []byte {
	t.Helper()
	hcm := func(route string) *listenerv3.Filter {
		return &listenerv3.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcmv3.HttpConnectionManager{
			StatPrefix: route,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				RouteConfigName: route,
				ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3},
			}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
		})}}
	}
	vip := func(ip string, port uint32) *listenerv3.FilterChainMatch {
		return &listenerv3.FilterChainMatch{
			DestinationPort: wrapperspb.UInt32(port),
			PrefixRanges:    []*corev3.CidrRange{{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(32)}},
		}
	}
	sniffed := vip("10.96.0.20", 9000)
	sniffed.ApplicationProtocols = []string{"http/1.0", "http/1.1", "h2c"}
	listener := &listenerv3.Listener{
		Name: "main_internal",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15008}}}},
		ListenerFilters: []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.http_inspector",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(t, &httpinspectorv3.HttpInspector{})}}},
		FilterChains: []*listenerv3.FilterChain{
			{Name: "inbound-vip|9080|http|" + reviews, FilterChainMatch: vip("10.96.0.10", 9080), Filters: []*listenerv3.Filter{hcm("inbound-vip|9080|http|" + reviews)}},
			{Name: "inbound-vip|9000|http|" + ratings, FilterChainMatch: sniffed, Filters: []*listenerv3.Filter{hcm("inbound-vip|9000|http|" + ratings)}},
			{Name: "inbound-vip|9000|tcp|" + ratings, FilterChainMatch: vip("10.96.0.20", 9000), Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{
					StatPrefix:       "inbound-vip|9000|tcp|" + ratings,
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "inbound-vip|9000|tcp|" + ratings},
				})}}}},
		},
	}
	vs := istioMeta(t, "/apis/networking.istio.io/v1/namespaces/bookinfo/virtual-service/reviews")
	routes := []*routev3.RouteConfiguration{
		{Name: "inbound-vip|9080|http|" + reviews, VirtualHosts: []*routev3.VirtualHost{{
			Name: reviews + ":9080", Domains: []string{"*"},
			Routes: []*routev3.Route{
				{Name: "consumer", Match: &routev3.RouteMatch{
					PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
					FilterState: []*matcherv3.FilterStateMatcher{{Key: "io.istio.peer_principal", Matcher: &matcherv3.FilterStateMatcher_StringMatch{
						StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
							Regex: "spiffe://[^/]+/ns/frontend/sa/[^/]+"}}}}}},
				}},
				{Name: "jason", Metadata: vs, Match: &routev3.RouteMatch{
					PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
					Headers: []*routev3.HeaderMatcher{{Name: "end-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
						StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "jason"}}}}},
				}},
				{Name: "api", Metadata: vs, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/api/v[12]/.*"}}}},
				{Name: "health", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/health"}}},
				{Name: "default", Metadata: vs, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}},
			},
		}}},
		{Name: "inbound-vip|9000|http|" + ratings, VirtualHosts: []*routev3.VirtualHost{{
			Name: ratings + ":9000", Domains: []string{"*", "ratings", "ratings.bookinfo"},
			Routes: []*routev3.Route{{Name: "default", Match: &routev3.RouteMatch{
				PathSpecifier:   &routev3.RouteMatch_Prefix{Prefix: "/"},
				QueryParameters: []*routev3.QueryParameterMatcher{{Name: "canary"}},
			}}},
		}}},
	}
	dr := istioMeta(t, "/apis/networking.istio.io/v1/namespaces/bookinfo/destination-rule/reviews")
	eds := func(name string, md *corev3.Metadata) *clusterv3.Cluster {
		return &clusterv3.Cluster{Name: name, Metadata: md, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	}
	clusters := []*clusterv3.Cluster{
		eds("inbound-vip|9080|http/v2|"+reviews, dr),
		eds("inbound-vip|9080|http|"+reviews, dr),
		eds("inbound-vip|9080|http/v1|"+reviews, dr),
		eds("inbound-vip|9000|tcp|"+ratings, nil),
		eds("inbound-vip|9000|http|"+ratings, nil),
		{Name: "BlackHoleCluster", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}},
	}
	ep := func(ip string, port uint32, health corev3.HealthStatus) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HealthStatus: health, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		}}}
	}
	zoneA := &corev3.Locality{Region: "eu-west1", Zone: "eu-west1-a"}
	cla := func(name string, loc *corev3.Locality, eps ...*endpointv3.LbEndpoint) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{Locality: loc, LbEndpoints: eps}}}
	}
	endpoints := []*endpointv3.ClusterLoadAssignment{
		cla("inbound-vip|9080|http/v2|"+reviews, zoneA, ep("10.244.1.7", 9080, corev3.HealthStatus_HEALTHY)),
		cla("inbound-vip|9080|http/v1|"+reviews, zoneA, ep("10.244.2.5", 9080, corev3.HealthStatus_UNKNOWN)),
		cla("inbound-vip|9080|http|"+reviews, zoneA,
			ep("10.244.2.5", 9080, corev3.HealthStatus_UNKNOWN), ep("10.244.1.7", 9080, corev3.HealthStatus_HEALTHY), ep("fd00::9", 9080, corev3.HealthStatus_DRAINING)),
		cla("inbound-vip|9000|tcp|"+ratings, nil, ep("10.244.1.9", 9000, corev3.HealthStatus_UNHEALTHY)),
	}

	d := &adminv3.ConfigDump{}
	ld := &adminv3.ListenersConfigDump{DynamicListeners: []*adminv3.ListenersConfigDump_DynamicListener{{
		Name: listener.Name, ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: "3", Listener: mustAny(t, listener)}}}}
	rd := &adminv3.RoutesConfigDump{}
	for _, r := range routes {
		rd.DynamicRouteConfigs = append(rd.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: "3", RouteConfig: mustAny(t, r)})
	}
	cd := &adminv3.ClustersConfigDump{}
	for _, c := range clusters {
		if c.Name == "BlackHoleCluster" {
			cd.StaticClusters = append(cd.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: mustAny(t, c)})
			continue
		}
		cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: "3", Cluster: mustAny(t, c)})
	}
	ed := &adminv3.EndpointsConfigDump{}
	for _, e := range endpoints {
		ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: mustAny(t, e)})
	}
	for _, m := range []proto.Message{ld, rd, cd, ed} {
		d.Configs = append(d.Configs, mustAny(t, m))
	}
	b, err := protojson.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// adminServer serves body as a waypoint admin's /config_dump.
func adminServer(t *testing.T, body []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/config_dump" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestGolden runs the commands of testdata/*.txtar ("args", one line)
// and compares what they print with "stdout". proxy-config reads the
// waypointDump; run with -update to rewrite the expectations.
func TestGolden(t *testing.T) {
	admin := adminServer(t, waypointDump(t))
	golden.Each(t, *update, func(t *testing.T, ar golden.Archive) {
		args, ok := ar.File("args")
		if !ok {
			t.Fatal("archive has no args")
		}
		argv := strings.Fields(string(args))
		if len(argv) > 0 && argv[0] == "proxy-config" {
			argv = append(argv, "--admin-address", admin)
		}
		stdout, stderr, code := zmeshctl(t, argv...)
		if code != 0 {
			t.Fatalf("zmeshctl %s: exit %d, stderr %q", args, code, stderr)
		}
		if want, _ := ar.File("stdout"); !*update && stdout != string(want) {
			t.Errorf("zmeshctl %s:\n%s\nwant:\n%s", strings.TrimSpace(string(args)), stdout, want)
		}
		ar.Set("stdout", []byte(stdout))
	})
}

func TestProxyConfigOutputPassesTheDumpThrough(t *testing.T) {
	dump := waypointDump(t)
	admin := adminServer(t, dump)
	stdout, stderr, code := zmeshctl(t, "proxy-config", "clusters", "waypoint", "--admin-address", admin, "-o", "json")
	if code != 0 || stdout != string(dump)+"\n" {
		t.Errorf("-o json: exit %d, stderr %q; the output differs from the dump", code, stderr)
	}
	stdout, _, code = zmeshctl(t, "proxy-config", "routes", "--admin-address", admin, "-o", "yaml")
	if code != 0 || !strings.Contains(stdout, "route_config_name: inbound-vip|9080|http|"+reviews) && !strings.Contains(stdout, "routeConfigName: inbound-vip|9080|http|"+reviews) {
		t.Errorf("-o yaml: exit %d:\n%.2000s", code, stdout)
	}
}

// A filter config of a type zmeshctl does not know still lets it print
// the rest, naming the filter.
func TestProxyConfigUnknownFilterType(t *testing.T) {
	const dump = `{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ListenersConfigDump","dynamic_listeners":[{"name":"main_internal","active_state":{"listener":{
	  "@type":"type.googleapis.com/envoy.config.listener.v3.Listener","name":"main_internal",
	  "address":{"socket_address":{"address":"0.0.0.0","port_value":15008}},
	  "filter_chains":[{"filter_chain_match":{"destination_port":7000},"filters":[{"name":"envoy.filters.network.lua","typed_config":{
	    "@type":"type.googleapis.com/envoy.extensions.filters.network.lua.v3.Lua","default_source_code":{"inline_string":"x"}}}]}]}}}]}]}`
	stdout, stderr, code := zmeshctl(t, "proxy-config", "listeners", "--admin-address", adminServer(t, []byte(dump)))
	want := "ADDRESSES   PORT   MATCH   DESTINATION\n0.0.0.0     7000   ALL     envoy.filters.network.lua\n"
	if code != 0 || stdout != want {
		t.Errorf("exit %d, stderr %q, stdout\n%s\nwant\n%s", code, stderr, stdout, want)
	}
}

func TestProxyConfigBadDump(t *testing.T) {
	admin := adminServer(t, []byte(`{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ClustersConfigDump","dynamic_active_clusters":[{"cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster","name":7}}]}]}`))
	_, stderr, code := zmeshctl(t, "proxy-config", "clusters", "wp", "--admin-address", admin)
	if code != exitFailure || !strings.Contains(stderr, "error: waypoint wp admin at "+admin+": decode config dump: configs[0] (type.googleapis.com/envoy.admin.v3.ClustersConfigDump)") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestDescribeFilterState: a consumer route's peer match reads as the
// namespace whose clients it serves; any other condition shows its key and
// pattern rather than vanishing from the table.
func TestDescribeFilterState(t *testing.T) {
	regex := func(key, re string) *matcherv3.FilterStateMatcher {
		return &matcherv3.FilterStateMatcher{Key: key, Matcher: &matcherv3.FilterStateMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}}}
	}
	for _, tc := range []struct {
		fs   *matcherv3.FilterStateMatcher
		want string
	}{
		{regex("io.istio.peer_principal", "spiffe://[^/]+/ns/shop-2/sa/[^/]+"), "clients of ns shop-2"},
		{regex("io.istio.peer_principal", "spiffe://[^/]+/ns/shop/sa/web"), "io.istio.peer_principal ~ spiffe://[^/]+/ns/shop/sa/web"},
		{regex("other", "spiffe://[^/]+/ns/shop/sa/[^/]+"), "other ~ spiffe://[^/]+/ns/shop/sa/[^/]+"},
	} {
		if got := describeFilterState(tc.fs); got != tc.want {
			t.Errorf("describeFilterState(%v) = %q, want %q", tc.fs, got, tc.want)
		}
	}
}
