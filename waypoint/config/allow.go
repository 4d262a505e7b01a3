package config

import (
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	// Registered for the google.protobuf.Any values the allow-list accepts.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// supported lists, per message type, the fields the compiler implements.
// A message type missing from this map is refused wherever it appears.
var supported = map[protoreflect.FullName][]protoreflect.Name{
	"envoy.config.route.v3.RouteConfiguration": {"name", "virtual_hosts",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"most_specific_header_mutations_wins", "validate_clusters", "max_direct_response_body_size_bytes",
		"ignore_port_in_host_matching"},
	"envoy.config.route.v3.VirtualHost": {"name", "domains", "routes",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"typed_per_filter_config", "include_request_attempt_count"},
	"envoy.config.route.v3.Route": {"name", "match", "route", "redirect", "direct_response",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"typed_per_filter_config", "decorator", "metadata"},
	"envoy.config.route.v3.Decorator": {"operation"},
	"envoy.config.route.v3.RouteMatch": {"prefix", "path", "safe_regex", "path_separated_prefix",
		"case_sensitive", "headers", "query_parameters", "filter_state"},
	"envoy.config.route.v3.HeaderMatcher":           {"name", "string_match", "present_match", "invert_match", "treat_missing_header_as_empty"},
	"envoy.config.route.v3.QueryParameterMatcher":   {"name", "string_match", "present_match"},
	"envoy.type.matcher.v3.StringMatcher":           {"exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"},
	"envoy.type.matcher.v3.RegexMatcher":            {"regex"},
	"envoy.type.matcher.v3.RegexMatchAndSubstitute": {"pattern", "substitution"},
	"envoy.config.route.v3.RouteAction": {"cluster", "weighted_clusters", "prefix_rewrite", "regex_rewrite",
		"host_rewrite_literal", "timeout", "retry_policy", "request_mirror_policies", "hash_policy"},
	"envoy.config.route.v3.RouteAction.HashPolicy": {"header", "cookie", "connection_properties",
		"query_parameter", "terminal"},
	"envoy.config.route.v3.RouteAction.HashPolicy.Header":               {"header_name"},
	"envoy.config.route.v3.RouteAction.HashPolicy.Cookie":               {"name", "ttl", "path"},
	"envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties": {"source_ip"},
	"envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter":       {"name"},
	"envoy.config.route.v3.WeightedCluster":                             {"clusters", "total_weight"},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": {"name", "weight",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"},
	"envoy.config.route.v3.RetryPolicy": {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
		"retry_back_off", "retry_host_predicate", "host_selection_retry_max_attempts"},
	"envoy.config.route.v3.RetryPolicy.RetryBackOff":                       {"base_interval", "max_interval"},
	"envoy.config.route.v3.RetryPolicy.RetryHostPredicate":                 {"name", "typed_config"},
	"envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": {},
	"envoy.config.route.v3.RouteAction.RequestMirrorPolicy":                {"cluster", "runtime_fraction", "trace_sampled"},
	"envoy.config.core.v3.RuntimeFractionalPercent":                        {"default_value"},
	"envoy.type.v3.FractionalPercent":                                      {"numerator", "denominator"},
	"envoy.config.route.v3.RedirectAction": {"https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query"},
	"envoy.config.route.v3.DirectResponseAction": {"status", "body"},
	"envoy.config.core.v3.DataSource":            {"inline_string", "inline_bytes"},
	"envoy.config.core.v3.HeaderValueOption":     {"header", "append", "append_action", "keep_empty_value"},
	"envoy.config.core.v3.HeaderValue":           {"key", "value", "raw_value"},
	"envoy.extensions.filters.http.cors.v3.CorsPolicy": {"allow_origin_string_match", "allow_methods",
		"allow_headers", "expose_headers", "max_age", "allow_credentials", "filter_enabled",
		"allow_private_network_access", "forward_not_matching_preflights"},

	// Clusters (CompileClusters). Which values of these fields are
	// accepted (EDS only, DEFAULT priority only, …) is checked afterwards.
	"envoy.config.cluster.v3.Cluster": {"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config", "common_lb_config",
		"outlier_detection", "circuit_breakers", "typed_extension_protocol_options", "metadata"},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig":                        {"eds_config", "service_name"},
	"envoy.config.core.v3.ConfigSource":                                       {"ads", "resource_api_version", "initial_fetch_timeout"},
	"envoy.config.core.v3.AggregatedConfigSource":                             {},
	"envoy.config.cluster.v3.Cluster.LeastRequestLbConfig":                    {"choice_count"},
	"envoy.config.cluster.v3.Cluster.RingHashLbConfig":                        {"minimum_ring_size", "hash_function", "maximum_ring_size"},
	"envoy.config.cluster.v3.Cluster.MaglevLbConfig":                          {"table_size"},
	"envoy.config.cluster.v3.Cluster.CommonLbConfig":                          {"healthy_panic_threshold", "locality_weighted_lb_config"},
	"envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig": {},
	"envoy.type.v3.Percent":                                                   {"value"},
	"envoy.config.cluster.v3.OutlierDetection": {"consecutive_5xx", "interval", "base_ejection_time",
		"max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
		"consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
		"split_external_local_origin_errors", "consecutive_local_origin_failure",
		"enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
		"enforcing_failure_percentage", "enforcing_failure_percentage_local_origin", "max_ejection_time"},
	"envoy.config.cluster.v3.CircuitBreakers": {"thresholds"},
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds": {"priority", "max_connections", "max_pending_requests",
		"max_requests", "max_retries", "track_remaining"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"common_http_protocol_options",
		"explicit_http_config", "use_downstream_protocol_config"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig":      {"http_protocol_options", "http2_protocol_options"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig": {"http_protocol_options", "http2_protocol_options"},
	"envoy.config.core.v3.HttpProtocolOptions":                                       {"idle_timeout", "max_requests_per_connection"},
	"envoy.config.core.v3.Http1ProtocolOptions":                                      {},
	"envoy.config.core.v3.Http2ProtocolOptions":                                      {"max_concurrent_streams"},

	// Endpoints (CompileAssignments).
	"envoy.config.endpoint.v3.ClusterLoadAssignment":        {"cluster_name", "endpoints", "policy"},
	"envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": {"overprovisioning_factor"},
	"envoy.config.endpoint.v3.LocalityLbEndpoints":          {"locality", "lb_endpoints", "load_balancing_weight", "priority"},
	"envoy.config.core.v3.Locality":                         {"region", "zone", "sub_zone"},
	"envoy.config.endpoint.v3.LbEndpoint":                   {"endpoint", "health_status", "metadata", "load_balancing_weight"},
	"envoy.config.endpoint.v3.Endpoint":                     {"address"},
	"envoy.config.core.v3.Address":                          {"socket_address"},
	"envoy.config.core.v3.SocketAddress":                    {"protocol", "address", "port_value"},

	// RBAC filter (CompileRBAC).
	"envoy.extensions.filters.http.rbac.v3.RBAC":    {"rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix"},
	"envoy.extensions.filters.network.rbac.v3.RBAC": {"rules", "stat_prefix", "shadow_rules", "shadow_rules_stat_prefix"},
	"envoy.config.rbac.v3.RBAC":                     {"action", "policies"},
	"envoy.config.rbac.v3.Policy":                   {"permissions", "principals"},
	"envoy.config.rbac.v3.Permission": {"and_rules", "or_rules", "any", "header", "url_path", "destination_ip",
		"destination_port", "destination_port_range", "metadata", "not_rule"},
	"envoy.config.rbac.v3.Permission.Set": {"rules"},
	"envoy.config.rbac.v3.Principal": {"and_ids", "or_ids", "any", "authenticated", "source_ip",
		"direct_remote_ip", "remote_ip", "header", "url_path", "metadata", "not_id", "filter_state"},
	"envoy.config.rbac.v3.Principal.Set":                {"ids"},
	"envoy.config.rbac.v3.Principal.Authenticated":      {"principal_name"},
	"envoy.config.core.v3.CidrRange":                    {"address_prefix", "prefix_len"},
	"envoy.type.v3.Int32Range":                          {"start", "end"},
	"envoy.type.matcher.v3.PathMatcher":                 {"path"},
	"envoy.type.matcher.v3.MetadataMatcher":             {"filter", "path", "value", "invert"},
	"envoy.type.matcher.v3.MetadataMatcher.PathSegment": {"key"},
	"envoy.type.matcher.v3.ValueMatcher":                {"string_match", "present_match", "list_match"},
	"envoy.type.matcher.v3.FilterStateMatcher":          {"key", "string_match"},
	"envoy.type.matcher.v3.ListMatcher":                 {"one_of"},

	// Listener (CompileListener): the shape zmeshd sends a waypoint.
	"envoy.config.listener.v3.Listener":                                 {"name", "address", "filter_chains", "listener_filters"},
	"envoy.config.listener.v3.ListenerFilter":                           {"name", "typed_config"},
	"envoy.config.listener.v3.FilterChain":                              {"filter_chain_match", "filters", "name"},
	"envoy.config.listener.v3.FilterChainMatch":                         {"destination_port", "prefix_ranges", "application_protocols"},
	"envoy.config.listener.v3.Filter":                                   {"name", "typed_config"},
	"envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": {},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {"codec_type", "stat_prefix",
		"rds", "http_filters", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action"},
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":        {"config_source", "route_config_name"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {"name", "typed_config"},
	"envoy.extensions.filters.http.router.v3.Router":                         {},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":                 {"stat_prefix", "cluster"},

	// JWT authentication filter (CompileJWT): keys inline only.
	"envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": {"providers", "rules", "bypass_cors_preflight"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtProvider": {"issuer", "audiences", "local_jwks", "forward",
		"from_headers", "from_params", "forward_payload_header", "payload_in_metadata", "clock_skew_seconds",
		"claim_to_headers", "normalize_payload_in_metadata"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtHeader":                    {"name", "value_prefix"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader":             {"header_name", "claim_name"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload": {"space_delimited_claims"},
	"envoy.extensions.filters.http.jwt_authn.v3.RequirementRule":              {"match", "requires"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement":               {"provider_name", "requires_any", "requires_all", "allow_missing", "allow_missing_or_failed"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList":         {"requirements"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList":        {"requirements"},

	// Fault filter (CompileFault).
	"envoy.extensions.filters.http.fault.v3.HTTPFault":    {"delay", "abort", "headers", "max_active_faults"},
	"envoy.extensions.filters.common.fault.v3.FaultDelay": {"fixed_delay", "percentage"},
	"envoy.extensions.filters.http.fault.v3.FaultAbort":   {"http_status", "grpc_status", "percentage"},
}

// opaque message types are accepted whole: scalar wrappers, durations, and
// metadata, which carries no behaviour.
var opaque = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":      true,
	"google.protobuf.BoolValue":     true,
	"google.protobuf.UInt32Value":   true,
	"google.protobuf.UInt64Value":   true,
	"envoy.config.core.v3.Metadata": true,
	// allow_missing and allow_missing_or_failed are Empty markers.
	"google.protobuf.Empty": true,
}

var supportedSet = func() map[protoreflect.FullName]map[protoreflect.Name]bool {
	out := map[protoreflect.FullName]map[protoreflect.Name]bool{}
	for msg, fields := range supported {
		out[msg] = map[protoreflect.Name]bool{}
		for _, f := range fields {
			out[msg][f] = true
		}
	}
	return out
}()

// checkSupported walks every set field of m and returns an error naming the
// path of the first one the compiler does not implement, in field-number
// order so that the answer is stable.
func checkSupported(m protoreflect.Message, path string) error {
	name := m.Descriptor().FullName()
	if opaque[name] {
		return nil
	}
	if name == "google.protobuf.Any" {
		return checkAny(m, path)
	}
	allowed, ok := supportedSet[name]
	if !ok {
		return nackf(path, "message type %s not supported", name)
	}
	if len(m.GetUnknown()) > 0 {
		return nackf(path, "unknown fields (not in this waypoint's Envoy API version)")
	}
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	sort.Slice(fields, func(i, j int) bool { return fields[i].Number() < fields[j].Number() })
	for _, fd := range fields {
		fp := join(path, string(fd.Name()))
		if !allowed[fd.Name()] {
			return nackf(fp, "not supported")
		}
		v := m.Get(fd)
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				continue
			}
			var keys []string
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k.String())
				return true
			})
			sort.Strings(keys)
			for _, k := range keys {
				mv := v.Map().Get(protoreflect.ValueOfString(k).MapKey())
				if err := checkSupported(mv.Message(), fp+"["+strconv.Quote(k)+"]"); err != nil {
					return err
				}
			}
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind {
				continue
			}
			for i := 0; i < v.List().Len(); i++ {
				if err := checkSupported(v.List().Get(i).Message(), fp+"["+strconv.Itoa(i)+"]"); err != nil {
					return err
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if err := checkSupported(v.Message(), fp); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkAny unpacks an Any and checks its contents under the same path.
func checkAny(m protoreflect.Message, path string) error {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return nackf(path, "malformed google.protobuf.Any")
	}
	inner, err := unpack(a)
	if err != nil {
		return nackf(path, "%v", err)
	}
	return checkSupported(inner.ProtoReflect(), path)
}

// unpack resolves an Any among the registered types. A type that is not
// linked into the waypoint cannot be supported.
func unpack(a *anypb.Any) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
	if err != nil {
		return nil, fmt.Errorf("type %q not supported", a.GetTypeUrl())
	}
	if _, ok := supported[mt.Descriptor().FullName()]; !ok {
		return nil, fmt.Errorf("type %s not supported", mt.Descriptor().FullName())
	}
	inner := mt.New().Interface()
	if err := proto.Unmarshal(a.GetValue(), inner); err != nil {
		return nil, fmt.Errorf("decode %s: %v", mt.Descriptor().FullName(), err)
	}
	return inner, nil
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
