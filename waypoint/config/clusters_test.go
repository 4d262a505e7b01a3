package config

import (
	"net/netip"
	"reflect"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

func parseCluster(t testing.TB, y string) *clusterv3.Cluster {
	return testutil.ProtoYAML(t, y, &clusterv3.Cluster{})
}

func parseCLA(t testing.TB, y string) *endpointv3.ClusterLoadAssignment {
	return testutil.ProtoYAML(t, y, &endpointv3.ClusterLoadAssignment{})
}

const edsCluster = "type: EDS\neds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}\n"

// waypointCluster is shaped as istiod builds a waypoint's cluster for a
// service port, with a DestinationRule's traffic policy applied.
const waypointCluster = `
name: "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"
type: EDS
eds_cluster_config:
  eds_config: {ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}
  service_name: "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"
connect_timeout: 10s
lb_policy: LEAST_REQUEST
least_request_lb_config: {choice_count: 3}
common_lb_config:
  healthy_panic_threshold: {value: 30}
  locality_weighted_lb_config: {}
outlier_detection:
  consecutive_5xx: 7
  interval: 5s
  base_ejection_time: 15s
  max_ejection_percent: 50
  enforcing_consecutive_5xx: 100
  enforcing_success_rate: 0
  consecutive_gateway_failure: 3
  enforcing_consecutive_gateway_failure: 100
  split_external_local_origin_errors: true
  consecutive_local_origin_failure: 2
  enforcing_consecutive_local_origin_failure: 100
  enforcing_local_origin_success_rate: 0
circuit_breakers:
  thresholds:
  - {max_connections: 100, max_pending_requests: 10, max_requests: 200, max_retries: 4, track_remaining: true}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: {idle_timeout: 3600s, max_requests_per_connection: 1000}
    use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {max_concurrent_streams: 100}}
metadata:
  filter_metadata:
    istio:
      services: [{host: reviews.default.svc.cluster.local, name: reviews, namespace: default}]
      subset: v1
      default_original_port: 8080
`

func TestCompileCluster(t *testing.T) {
	name := "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"
	cases := []struct {
		name, yaml string
		want       *upstream.Cluster
	}{
		{"istio waypoint cluster", waypointCluster, &upstream.Cluster{
			Name: name, EDSServiceName: name, ConnectTimeout: 10 * time.Second, EDSInitialFetchTimeout: 0,
			LB: upstream.LoadBalancing{Kind: upstream.LeastRequest, ChoiceCount: 3, LocalityWeighted: true, HealthyPanicThreshold: 30},
			Outlier: &upstream.OutlierDetection{
				Consecutive5xx: 7, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 3, EnforcingGatewayFailure: 100,
				SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: 2, EnforcingLocalOriginFailure: 100,
				Interval: 5 * time.Second, BaseEjectionTime: 15 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50,
			},
			Limits:   upstream.Limits{MaxConnections: 100, MaxPendingRequests: 10, MaxRequests: 200, MaxRetries: 4},
			HTTP:     upstream.HTTPOptions{Protocol: upstream.Downstream, IdleTimeout: time.Hour, MaxRequestsPerConnection: 1000, MaxConcurrentStreams: 100},
			Services: []upstream.ServiceRef{{Host: "reviews.default.svc.cluster.local", Name: "reviews", Namespace: "default"}},
			Subset:   "v1",
		}},
		{"envoy defaults", "name: c\n" + edsCluster, &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB:     upstream.LoadBalancing{Kind: upstream.RoundRobin, HealthyPanicThreshold: 50},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
		{"outlier defaults", "name: c\n" + edsCluster + "outlier_detection: {enforcing_success_rate: 0}\n", &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB: upstream.LoadBalancing{Kind: upstream.RoundRobin, HealthyPanicThreshold: 50},
			Outlier: &upstream.OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
				ConsecutiveLocalOriginFailure: 5, EnforcingLocalOriginFailure: 100, MaxEjectionPercent: 10,
				Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
		{"ring hash, explicit http2, panic mode off", "name: c\n" + edsCluster + `lb_policy: RING_HASH
ring_hash_lb_config: {minimum_ring_size: 2048, maximum_ring_size: 4096}
common_lb_config: {healthy_panic_threshold: {value: 0}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
`, &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB:     upstream.LoadBalancing{Kind: upstream.RingHash, MinimumRingSize: 2048, MaximumRingSize: 4096},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP2, IdleTimeout: time.Hour},
		}},
		{"maglev, random default table", "name: c\n" + edsCluster + "lb_policy: MAGLEV\n", &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB:     upstream.LoadBalancing{Kind: upstream.Maglev, MaglevTableSize: 65537, HealthyPanicThreshold: 50},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
		{"maglev table size, explicit http1", "name: c\n" + edsCluster + `lb_policy: MAGLEV
maglev_lb_config: {table_size: 251}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http_protocol_options: {}}
`, &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB:     upstream.LoadBalancing{Kind: upstream.Maglev, MaglevTableSize: 251, HealthyPanicThreshold: 50},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
		{"long base ejection raises the default maximum", "name: c\n" + edsCluster + "outlier_detection: {enforcing_success_rate: 0, base_ejection_time: 400s}\n", &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB: upstream.LoadBalancing{Kind: upstream.RoundRobin, HealthyPanicThreshold: 50},
			Outlier: &upstream.OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
				ConsecutiveLocalOriginFailure: 5, EnforcingLocalOriginFailure: 100, MaxEjectionPercent: 10,
				Interval: 10 * time.Second, BaseEjectionTime: 400 * time.Second, MaxEjectionTime: 400 * time.Second},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
		{"random", "name: c\n" + edsCluster + "lb_policy: RANDOM\n", &upstream.Cluster{
			Name: "c", EDSServiceName: "c", ConnectTimeout: 5 * time.Second, EDSInitialFetchTimeout: 15 * time.Second,
			LB:     upstream.LoadBalancing{Kind: upstream.Random, HealthyPanicThreshold: 50},
			Limits: upstream.Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3},
			HTTP:   upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: time.Hour},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CompileCluster(parseCluster(t, tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestClusterNack checks that every unsupported or invalid cluster field is
// refused with an error naming the cluster and the field's full path.
func TestClusterNack(t *testing.T) {
	hpo := func(body string) string {
		return "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n" + body
	}
	const od = "outlier_detection: {enforcing_success_rate: 0, "
	cases := []struct{ name, yaml, want string }{
		{"transport socket", "name: x\n" + edsCluster + "transport_socket: {name: envoy.transport_sockets.tls}\n",
			`clusters "x": transport_socket.name: "envoy.transport_sockets.tls" not supported: endpoints are dialled over HBONE, verifying the identity in their metadata`},
		{"transport socket without name", "name: x\n" + edsCluster + "transport_socket: {}\n",
			`clusters "x": transport_socket: not supported: endpoints are dialled over HBONE, verifying the identity in their metadata`},
		{"transport socket matches", "name: x\n" + edsCluster + "transport_socket_matches: [{name: m}]\n",
			`clusters "x": transport_socket_matches: not supported`},
		{"health checks", "name: x\n" + edsCluster + "health_checks: [{timeout: 1s}]\n",
			`clusters "x": health_checks: not supported`},
		{"load_balancing_policy", "name: x\n" + edsCluster + "load_balancing_policy: {}\n",
			`clusters "x": load_balancing_policy: not supported`},
		{"no name", edsCluster, `clusters "": name: required`},
		{"original dst", "name: x\ntype: ORIGINAL_DST\n", `clusters "x": type: ORIGINAL_DST not supported (only EDS)`},
		{"static", "name: x\n", `clusters "x": type: STATIC not supported (only EDS)`},
		{"load assignment inline", "name: x\n" + edsCluster + "load_assignment: {cluster_name: x}\n",
			`clusters "x": load_assignment: not supported`},
		{"eds over a path", "name: x\ntype: EDS\neds_cluster_config: {eds_config: {path_config_source: {path: /eds}}}\n",
			`clusters "x": eds_cluster_config.eds_config.path_config_source: not supported`},
		{"eds without ads", "name: x\ntype: EDS\neds_cluster_config: {eds_config: {resource_api_version: V3}}\n",
			`clusters "x": eds_cluster_config.eds_config.ads: required: endpoints come over the same ADS stream`},
		{"eds v2", "name: x\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\n",
			`clusters "x": eds_cluster_config.eds_config.resource_api_version: AUTO not supported (only V3)`},
		{"negative initial fetch timeout", "name: x\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: -1s}}\n",
			`clusters "x": eds_cluster_config.eds_config.initial_fetch_timeout: negative`},
		{"zero connect timeout", "name: x\n" + edsCluster + "connect_timeout: 0s\n",
			`clusters "x": connect_timeout: must be greater than 0`},
		{"negative connect timeout", "name: x\n" + edsCluster + "connect_timeout: -1s\n",
			`clusters "x": connect_timeout: negative`},
		{"cluster provided lb", "name: x\n" + edsCluster + "lb_policy: CLUSTER_PROVIDED\n",
			`clusters "x": lb_policy: CLUSTER_PROVIDED not supported`},
		{"choice count 1", "name: x\n" + edsCluster + "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {choice_count: 1}\n",
			`clusters "x": least_request_lb_config.choice_count: 1: must be at least 2`},
		{"active request bias", "name: x\n" + edsCluster + "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {active_request_bias: {default_value: 1, runtime_key: k}}\n",
			`clusters "x": least_request_lb_config.active_request_bias: not supported`},
		{"lb config of another policy", "name: x\n" + edsCluster + "ring_hash_lb_config: {}\n",
			`clusters "x": ring_hash_lb_config: set but lb_policy is ROUND_ROBIN`},
		{"murmur hash", "name: x\n" + edsCluster + "lb_policy: RING_HASH\nring_hash_lb_config: {hash_function: MURMUR_HASH_2}\n",
			`clusters "x": ring_hash_lb_config.hash_function: MURMUR_HASH_2 not supported (only XX_HASH)`},
		{"ring min above max", "name: x\n" + edsCluster + "lb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 10, maximum_ring_size: 5}\n",
			`clusters "x": ring_hash_lb_config: minimum_ring_size 10 exceeds maximum_ring_size 5`},
		{"ring too large", "name: x\n" + edsCluster + "lb_policy: RING_HASH\nring_hash_lb_config: {maximum_ring_size: 8388609}\n",
			`clusters "x": ring_hash_lb_config.maximum_ring_size: 8388609: must be in [1, 8388608]`},
		{"maglev not prime", "name: x\n" + edsCluster + "lb_policy: MAGLEV\nmaglev_lb_config: {table_size: 65536}\n",
			`clusters "x": maglev_lb_config.table_size: 65536: must be a prime no larger than 5000011`},
		{"panic threshold above 100", "name: x\n" + edsCluster + "common_lb_config: {healthy_panic_threshold: {value: 101}}\n",
			`clusters "x": common_lb_config.healthy_panic_threshold.value: 101: must be a percentage in [0, 100]`},
		{"zone aware lb", "name: x\n" + edsCluster + "common_lb_config: {zone_aware_lb_config: {}}\n",
			`clusters "x": common_lb_config.zone_aware_lb_config: not supported`},
		{"success rate left to its default", "name: x\n" + edsCluster + "outlier_detection: {consecutive_5xx: 3}\n",
			`clusters "x": outlier_detection.enforcing_success_rate: must be set to 0: success-rate ejection is not supported`},
		{"success rate enforced", "name: x\n" + edsCluster + "outlier_detection: {enforcing_success_rate: 100}\n",
			`clusters "x": outlier_detection.enforcing_success_rate: must be set to 0: success-rate ejection is not supported`},
		{"success rate stdev", "name: x\n" + edsCluster + od + "success_rate_stdev_factor: 1900}\n",
			`clusters "x": outlier_detection.success_rate_stdev_factor: not supported`},
		{"local origin success rate left to its default", "name: x\n" + edsCluster + od + "split_external_local_origin_errors: true}\n",
			`clusters "x": outlier_detection.enforcing_local_origin_success_rate: must be set to 0 with split_external_local_origin_errors: success-rate ejection is not supported`},
		{"local origin without split", "name: x\n" + edsCluster + od + "consecutive_local_origin_failure: 2}\n",
			`clusters "x": outlier_detection.consecutive_local_origin_failure: needs split_external_local_origin_errors`},
		{"failure percentage", "name: x\n" + edsCluster + od + "enforcing_failure_percentage: 10}\n",
			`clusters "x": outlier_detection.enforcing_failure_percentage: 10 not supported (only 0)`},
		{"ejection percent above 100", "name: x\n" + edsCluster + od + "max_ejection_percent: 101}\n",
			`clusters "x": outlier_detection.max_ejection_percent: 101: must be a percentage in [0, 100]`},
		{"zero interval", "name: x\n" + edsCluster + od + "interval: 0s}\n",
			`clusters "x": outlier_detection.interval: must be greater than 0`},
		{"base above max ejection", "name: x\n" + edsCluster + od + "base_ejection_time: 400s, max_ejection_time: 300s}\n",
			`clusters "x": outlier_detection.base_ejection_time: 6m40s exceeds max_ejection_time 5m0s`},
		{"http2 streams above 2^31-1", "name: x\n" + edsCluster + hpo("    explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 2147483648}}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http2_protocol_options.max_concurrent_streams: 2147483648: must be in [1, 2147483647]`},
		{"high priority thresholds", "name: x\n" + edsCluster + "circuit_breakers: {thresholds: [{priority: HIGH, max_connections: 1}]}\n",
			`clusters "x": circuit_breakers.thresholds[0].priority: HIGH not supported (only DEFAULT)`},
		{"default thresholds twice", "name: x\n" + edsCluster + "circuit_breakers: {thresholds: [{max_connections: 1}, {max_requests: 2}]}\n",
			`clusters "x": circuit_breakers.thresholds[1].priority: DEFAULT given twice`},
		{"retry budget", "name: x\n" + edsCluster + "circuit_breakers: {thresholds: [{retry_budget: {}}]}\n",
			`clusters "x": circuit_breakers.thresholds[0].retry_budget: not supported`},
		{"per host thresholds", "name: x\n" + edsCluster + "circuit_breakers: {per_host_thresholds: [{max_connections: 1}]}\n",
			`clusters "x": circuit_breakers.per_host_thresholds: not supported`},
		{"other protocol options", "name: x\n" + edsCluster + "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.config.cluster.v3.CircuitBreakers\n",
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]: type envoy.config.cluster.v3.CircuitBreakers not supported (want envoy.extensions.upstreams.http.v3.HttpProtocolOptions)`},
		{"protocol options under another key", "name: x\n" + edsCluster + "typed_extension_protocol_options:\n  envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    explicit_http_config: {http_protocol_options: {}}\n",
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"]: not supported (only envoy.extensions.upstreams.http.v3.HttpProtocolOptions)`},
		{"auto config", "name: x\n" + edsCluster + hpo("    auto_config: {}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].auto_config: not supported`},
		{"http3", "name: x\n" + edsCluster + hpo("    explicit_http_config: {http3_protocol_options: {}}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http3_protocol_options: not supported`},
		{"no protocol", "name: x\n" + edsCluster + hpo("    common_http_protocol_options: {idle_timeout: 1s}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]: one of explicit_http_config or use_downstream_protocol_config is required`},
		{"downstream without http2", "name: x\n" + edsCluster + hpo("    use_downstream_protocol_config: {http_protocol_options: {}}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].use_downstream_protocol_config.http2_protocol_options: required: HTTP/2 requests stay HTTP/2 upstream`},
		{"http2 window size", "name: x\n" + edsCluster + hpo("    explicit_http_config: {http2_protocol_options: {initial_stream_window_size: 65536}}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http2_protocol_options.initial_stream_window_size: not supported`},
		{"max connection duration", "name: x\n" + edsCluster + hpo("    explicit_http_config: {http_protocol_options: {}}\n    common_http_protocol_options: {max_connection_duration: 1s}\n"),
			`clusters "x": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].common_http_protocol_options.max_connection_duration: not supported`},
		{"services not a list", "name: x\n" + edsCluster + "metadata: {filter_metadata: {istio: {services: a}}}\n",
			`clusters "x": metadata.filter_metadata["istio"].services: must be a list`},
		{"service host not a string", "name: x\n" + edsCluster + "metadata: {filter_metadata: {istio: {services: [{host: 1}]}}}\n",
			`clusters "x": metadata.filter_metadata["istio"].services[0].host: must be a string`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileCluster(parseCluster(t, tc.yaml))
			wantNack(t, tc.name, err, tc.want)
		})
	}
}

func TestCompileClustersDuplicate(t *testing.T) {
	c := parseCluster(t, "name: x\n"+edsCluster)
	_, err := CompileClusters([]*clusterv3.Cluster{c, c})
	if want := `clusters "x": name: duplicate cluster name (clusters[1])`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	got, err := CompileClusters([]*clusterv3.Cluster{c, parseCluster(t, "name: yy\n"+edsCluster)})
	if err != nil || len(got) != 2 || got["yy"].Name != "yy" {
		t.Fatalf("got %v, %v", got, err)
	}
}

// endpointYAML is one lb_endpoint with the metadata zmeshd writes.
func endpointYAML(ip string, port int, extra string) string {
	return "    - endpoint: {address: {socket_address: {address: \"" + ip + "\", port_value: " + strconv.Itoa(port) + "}}}\n" +
		"      metadata: {filter_metadata: {zmesh: {identity: \"spiffe://cluster.local/ns/default/sa/reviews\", labels: {app: reviews, version: v1}}}}\n" + extra
}

func TestCompileAssignment(t *testing.T) {
	la := parseCLA(t, `
cluster_name: "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local"
policy: {overprovisioning_factor: 200}
endpoints:
- locality: {region: eu, zone: eu-1, sub_zone: a}
  load_balancing_weight: 3
  lb_endpoints:
`+endpointYAML("10.0.0.1", 9080, "      load_balancing_weight: 5\n")+endpointYAML("10.0.0.2", 9080, "      health_status: DEGRADED\n")+`
- locality: {region: us}
  priority: 2
  lb_endpoints:
`+endpointYAML("::ffff:10.0.0.3", 9080, "      health_status: DRAINING\n")+endpointYAML("fd00::4", 9080, "      health_status: HEALTHY\n"))
	got, err := CompileAssignment(la)
	if err != nil {
		t.Fatal(err)
	}
	id := "spiffe://cluster.local/ns/default/sa/reviews"
	labels := map[string]string{"app": "reviews", "version": "v1"}
	want := &upstream.Assignment{
		ClusterName:            "inbound-vip|8080|http/v1|reviews.default.svc.cluster.local",
		OverprovisioningFactor: 200,
		Priorities: [][]upstream.Locality{
			{{Region: "eu", Zone: "eu-1", SubZone: "a", Weight: 3, Endpoints: []upstream.Endpoint{
				{Addr: netip.MustParseAddrPort("10.0.0.1:9080"), Health: upstream.Healthy, Weight: 5, Identity: id, Labels: labels},
				{Addr: netip.MustParseAddrPort("10.0.0.2:9080"), Health: upstream.Degraded, Weight: 1, Identity: id, Labels: labels},
			}}},
			nil,
			{{Region: "us", Endpoints: []upstream.Endpoint{
				{Addr: netip.MustParseAddrPort("10.0.0.3:9080"), Health: upstream.Unhealthy, Weight: 1, Identity: id, Labels: labels},
				{Addr: netip.MustParseAddrPort("[fd00::4]:9080"), Health: upstream.Healthy, Weight: 1, Identity: id, Labels: labels},
			}}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	empty, err := CompileAssignment(parseCLA(t, "cluster_name: c\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (&upstream.Assignment{ClusterName: "c", OverprovisioningFactor: 140}); !reflect.DeepEqual(empty, want) {
		t.Errorf("got %+v, want %+v", empty, want)
	}
}

// TestAssignmentNack checks the refusals of ClusterLoadAssignment fields,
// each naming the assignment and the full field path.
func TestAssignmentNack(t *testing.T) {
	one := func(lbEndpoint string) string {
		return "cluster_name: c\nendpoints:\n- lb_endpoints:\n" + lbEndpoint
	}
	md := "      metadata: {filter_metadata: {zmesh: {identity: \"spiffe://td/ns/a/sa/b\"}}}\n"
	addr := func(a string) string { return "    - endpoint: {address: {socket_address: " + a + "}}\n" }
	const p = `endpoints "c": endpoints[0].lb_endpoints[0]`
	cases := []struct{ name, yaml, want string }{
		{"no cluster name", "endpoints: []\n", `endpoints "": cluster_name: required`},
		{"drop overloads", "cluster_name: c\npolicy: {drop_overloads: [{category: x}]}\n",
			`endpoints "c": policy.drop_overloads: not supported`},
		{"zero overprovisioning", "cluster_name: c\npolicy: {overprovisioning_factor: 0}\n",
			`endpoints "c": policy.overprovisioning_factor: must be greater than 0`},
		{"named endpoints", "cluster_name: c\nnamed_endpoints: {a: {}}\n", `endpoints "c": named_endpoints: not supported`},
		{"priority too high", "cluster_name: c\nendpoints: [{priority: 129}]\n",
			`endpoints "c": endpoints[0].priority: 129: must be at most 128`},
		{"zero locality weight", "cluster_name: c\nendpoints: [{load_balancing_weight: 0}]\n",
			`endpoints "c": endpoints[0].load_balancing_weight: must be at least 1`},
		{"leds", "cluster_name: c\nendpoints: [{leds_cluster_locality_config: {leds_collection_name: x}}]\n",
			`endpoints "c": endpoints[0].leds_cluster_locality_config: not supported`},
		{"hostname", one("    - endpoint: {hostname: h}\n"), p + `.endpoint.hostname: not supported`},
		{"endpoint name", one("    - endpoint_name: e\n"), p + `.endpoint_name: not supported`},
		{"no endpoint", one("    - load_balancing_weight: 1\n"), p + `.endpoint: required`},
		{"pipe address", one("    - endpoint: {address: {pipe: {path: /x}}}\n"), p + `.endpoint.address.pipe: not supported`},
		{"udp", one(addr("{address: 10.0.0.1, port_value: 80, protocol: UDP}")), p + `.endpoint.address.socket_address.protocol: UDP not supported (only TCP)`},
		{"named port", one(addr("{address: 10.0.0.1, named_port: http}")), p + `.endpoint.address.socket_address.named_port: not supported`},
		{"resolver", one(addr("{address: 10.0.0.1, port_value: 80, resolver_name: r}")), p + `.endpoint.address.socket_address.resolver_name: not supported`},
		{"dns name", one(addr("{address: reviews.default, port_value: 80}")), p + `.endpoint.address.socket_address.address: "reviews.default" is not an IP address`},
		{"scoped ipv6", one(addr("{address: \"fe80::1%eth0\", port_value: 80}")), p + `.endpoint.address.socket_address.address: "fe80::1%eth0" is not an IP address`},
		{"unspecified", one(addr("{address: 0.0.0.0, port_value: 80}")), p + `.endpoint.address.socket_address.address: 0.0.0.0 cannot be an endpoint`},
		{"port 0", one(addr("{address: 10.0.0.1}")), p + `.endpoint.address.socket_address.port_value: 0: must be in [1, 65535]`},
		{"port too large", one(addr("{address: 10.0.0.1, port_value: 65536}")), p + `.endpoint.address.socket_address.port_value: 65536: must be in [1, 65535]`},
		{"zero weight", one(addr("{address: 10.0.0.1, port_value: 80}") + "      load_balancing_weight: 0\n" + md), p + `.load_balancing_weight: must be at least 1`},
		{"no metadata", one(addr("{address: 10.0.0.1, port_value: 80}")),
			p + `.metadata.filter_metadata["zmesh"]: required: the endpoint's SPIFFE identity`},
		{"no identity", one(addr("{address: 10.0.0.1, port_value: 80}") + "      metadata: {filter_metadata: {zmesh: {labels: {a: b}}}}\n"),
			p + `.metadata.filter_metadata["zmesh"].identity: required: the endpoint's SPIFFE identity`},
		{"identity not spiffe", one(addr("{address: 10.0.0.1, port_value: 80}") + "      metadata: {filter_metadata: {zmesh: {identity: \"https://td/x\"}}}\n"),
			p + `.metadata.filter_metadata["zmesh"].identity: "https://td/x" is not a SPIFFE ID: scheme is missing or invalid`},
		{"identity not a string", one(addr("{address: 10.0.0.1, port_value: 80}") + "      metadata: {filter_metadata: {zmesh: {identity: 1}}}\n"),
			p + `.metadata.filter_metadata["zmesh"].identity: must be a string`},
		{"label not a string", one(addr("{address: 10.0.0.1, port_value: 80}") + "      metadata: {filter_metadata: {zmesh: {identity: \"spiffe://td/ns/a/sa/b\", labels: {a: 1}}}}\n"),
			p + `.metadata.filter_metadata["zmesh"].labels["a"]: must be a string`},
		{"unknown zmesh metadata", one(addr("{address: 10.0.0.1, port_value: 80}") + "      metadata: {filter_metadata: {zmesh: {identity: \"spiffe://td/ns/a/sa/b\", plaintext: true}}}\n"),
			p + `.metadata.filter_metadata["zmesh"].plaintext: not supported`},
		{"duplicate address", one(addr("{address: 10.0.0.1, port_value: 80}") + md + addr("{address: \"::ffff:10.0.0.1\", port_value: 80}") + md),
			`endpoints "c": endpoints[0].lb_endpoints[1].endpoint.address: 10.0.0.1:80 already listed at endpoints[0].lb_endpoints[0]`},
		{"health check config", one("    - endpoint: {health_check_config: {port_value: 1}}\n"), p + `.endpoint.health_check_config: not supported`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileAssignment(parseCLA(t, tc.yaml))
			wantNack(t, tc.name, err, tc.want)
		})
	}
}

func TestCompileAssignmentsDuplicate(t *testing.T) {
	la := parseCLA(t, "cluster_name: c\n")
	_, err := CompileAssignments([]*endpointv3.ClusterLoadAssignment{la, la})
	if want := `endpoints "c": cluster_name: duplicate cluster_name (assignments[1])`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func TestCompileUpstreamNil(t *testing.T) {
	if _, err := CompileCluster(nil); err == nil {
		t.Error("nil cluster compiled")
	}
	if _, err := CompileAssignment(nil); err == nil {
		t.Error("nil assignment compiled")
	}
}
