package config

import (
	"errors"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"sigs.k8s.io/yaml"
)

func parse(t *testing.T, y string) *routev3.RouteConfiguration {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(js, rc); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	return rc
}

// vh wraps routes (YAML list items, indented for a virtual host) in a route
// configuration named rc with one virtual host.
func vh(routes string) string {
	return "name: rc\nvirtual_hosts:\n- name: vh\n  domains: [svc]\n  routes:\n" + routes
}

// TestNack checks that every unsupported or invalid field is refused with an
// error naming its full path.
func TestNack(t *testing.T) {
	okRoute := "  - match: {prefix: /}\n    route: {cluster: c}\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"unsupported match field", vh(okRoute + okRoute + "  - match: {prefix: /, grpc: {}}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[2].match.grpc: not supported"},
		{"unsupported top-level field", "name: rc\nvhds: {}\n", "rc: vhds: not supported"},
		{"cluster_header", vh("  - match: {prefix: /}\n    route: {cluster_header: x-cluster}\n"),
			"rc: virtual_hosts[0].routes[0].route.cluster_header: not supported"},
		{"deprecated header exact_match", vh("  - match: {prefix: /, headers: [{name: a, exact_match: b}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.headers[0].exact_match: not supported"},
		{"route match on another filter state key", vh(okRoute + "  - match: {prefix: /, filter_state: [{key: io.istio.peer_principal, string_match: {exact: a}}, {key: envoy.string, string_match: {exact: a}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[1].match.filter_state[1].key: \"envoy.string\" not supported (only \"io.istio.peer_principal\")"},
		{"route match on the peer principal's address", vh("  - match: {prefix: /, filter_state: [{key: io.istio.peer_principal, address_match: {}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.filter_state[0].address_match: not supported"},
		{"route match on the peer principal without a matcher", vh("  - match: {prefix: /, filter_state: [{key: io.istio.peer_principal}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.filter_state[0].string_match: required"},
		{"invalid peer principal regex", vh("  - match: {prefix: /, filter_state: [{key: io.istio.peer_principal, string_match: {safe_regex: {regex: \"(\"}}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.filter_state[0].string_match.safe_regex.regex: invalid RE2 regex \"(\": error parsing regexp: missing closing ): `(`"},
		{"runtime_fraction match", vh("  - match: {prefix: /, runtime_fraction: {default_value: {numerator: 1}}}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.runtime_fraction: not supported"},
		{"vhost require_tls", "name: rc\nvirtual_hosts:\n- name: vh\n  domains: [svc]\n  require_tls: ALL\n",
			"rc: virtual_hosts[0].require_tls: not supported"},
		{"invalid path regex", vh("  - match: {safe_regex: {regex: \"/a(\"}}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.safe_regex.regex: invalid RE2 regex \"/a(\": error parsing regexp: missing closing ): `/a(`"},
		{"invalid header regex", vh("  - match: {prefix: /, headers: [{name: a, string_match: {safe_regex: {regex: \"[\"}}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: invalid RE2 regex \"[\": error parsing regexp: missing closing ]: `[`"},
		{"invalid query regex", vh("  - match: {prefix: /, query_parameters: [{name: a, string_match: {safe_regex: {regex: \"*\"}}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.query_parameters[0].string_match.safe_regex.regex: invalid RE2 regex \"*\": error parsing regexp: missing argument to repetition operator: `*`"},
		{"google_re2 engine", vh("  - match: {safe_regex: {regex: /a, google_re2: {}}}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.safe_regex.google_re2: not supported"},
		{"regex rewrite missing group", vh("  - match: {prefix: /}\n    route: {cluster: c, regex_rewrite: {pattern: {regex: \"/(a)\"}, substitution: \"\\\\2\"}}\n"),
			"rc: virtual_hosts[0].routes[0].route.regex_rewrite.substitution: substitution \"\\\\2\" uses group \\2 but the pattern has 1"},
		{"regex rewrite invalid pattern", vh("  - match: {prefix: /}\n    redirect: {regex_rewrite: {pattern: {regex: \"(\"}, substitution: x}}\n"),
			"rc: virtual_hosts[0].routes[0].redirect.regex_rewrite.pattern.regex: invalid RE2 regex \"(\": error parsing regexp: missing closing ): `(`"},
		{"unknown per-filter config", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.fault:\n        \"@type\": type.googleapis.com/google.protobuf.Empty\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"]: type google.protobuf.Empty not supported"},
		{"per-route fault with an invalid status", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.fault:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n        abort: {http_status: 700, percentage: {numerator: 100}}\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].abort.http_status: 700 is not in [200, 600)"},
		{"per-route fault of another type", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.fault:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"]: type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy is not an HTTPFault"},
		{"per-route fault with an unsupported field", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.fault:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n        upstream_cluster: x\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].upstream_cluster: not supported"},
		{"unsupported field inside cors", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.cors:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n        shadow_enabled: {default_value: {numerator: 1}}\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.cors\"].shadow_enabled: not supported"},
		{"cors under another filter name", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.other:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.other\"]: filter not supported in typed_per_filter_config"},
		{"cors partly enabled", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    typed_per_filter_config:\n      envoy.filters.http.cors:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n        filter_enabled: {default_value: {numerator: 50}}\n"),
			"rc: virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.cors\"].filter_enabled: only 100% is supported"},
		{"other retry host predicate", vh("  - match: {prefix: /}\n    route: {cluster: c, retry_policy: {retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}}\n"),
			"rc: virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].name: \"envoy.retry_host_predicates.omit_canary_hosts\" not supported (only envoy.retry_host_predicates.previous_hosts)"},
		{"retry host predicate typed_config of another type", vh("  - match: {prefix: /}\n    route: {cluster: c, retry_policy: {retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy}}]}}\n"),
			"rc: virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].typed_config: type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy is not a PreviousHostsPredicate"},
		{"unknown retry_on", vh("  - match: {prefix: /}\n    route: {cluster: c, retry_policy: {retry_on: \"5xx,sometimes\"}}\n"),
			"rc: virtual_hosts[0].routes[0].route.retry_policy.retry_on: unknown condition \"sometimes\""},
		{"retry priority", vh("  - match: {prefix: /}\n    route: {cluster: c, retry_policy: {retry_priority: {name: x}}}\n"),
			"rc: virtual_hosts[0].routes[0].route.retry_policy.retry_priority: not supported"},
		{"mirror runtime key", vh("  - match: {prefix: /}\n    route: {cluster: c, request_mirror_policies: [{cluster: m, runtime_fraction: {runtime_key: k}}]}\n"),
			"rc: virtual_hosts[0].routes[0].route.request_mirror_policies[0].runtime_fraction.runtime_key: not supported"},
		{"duplicate domain", "name: rc\nvirtual_hosts:\n- {name: a, domains: [svc]}\n- {name: b, domains: [x, SVC]}\n",
			"rc: virtual_hosts[1].domains[1]: domain \"svc\" is also in virtual_hosts[0]"},
		{"two stars", "name: rc\nvirtual_hosts:\n- {name: a, domains: [\"*\"]}\n- {name: b, domains: [\"*\"]}\n",
			"rc: virtual_hosts[1].domains[0]: domain \"*\" is also in virtual_hosts[0]"},
		{"no domains", "name: rc\nvirtual_hosts:\n- {name: a}\n", "rc: virtual_hosts[0].domains: at least one domain is required"},
		{"weights sum to zero", vh("  - match: {prefix: /}\n    route: {weighted_clusters: {clusters: [{name: a, weight: 0}]}}\n"),
			"rc: virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the sum of the weights must be greater than 0"},
		{"total weight mismatch", vh("  - match: {prefix: /}\n    route: {weighted_clusters: {total_weight: 100, clusters: [{name: a, weight: 80}, {name: b, weight: 10}]}}\n"),
			"rc: virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: 100 is not the sum of the weights (90)"},
		{"weighted cluster host rewrite", vh("  - match: {prefix: /}\n    route: {weighted_clusters: {clusters: [{name: a, weight: 1, host_rewrite_literal: h}]}}\n"),
			"rc: virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].host_rewrite_literal: not supported"},
		{"pseudo-header add", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: \":path\", value: /x}}]\n"),
			"rc: virtual_hosts[0].routes[0].request_headers_to_add[0].header.key: header \":path\" may not be modified"},
		{"host remove", "name: rc\nresponse_headers_to_remove: [Host]\n", "rc: response_headers_to_remove[0]: header \"host\" may not be modified"},
		{"formatter", "name: rc\nvirtual_hosts:\n- name: vh\n  domains: [svc]\n  request_headers_to_add: [{header: {key: x-client, value: \"%DOWNSTREAM_REMOTE_ADDRESS%\"}}]\n",
			"rc: virtual_hosts[0].request_headers_to_add[0].header.value: value \"%DOWNSTREAM_REMOTE_ADDRESS%\" uses a %FORMATTER%: not supported"},
		{"append and append_action", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: a, value: b}, append: true, append_action: ADD_IF_ABSENT}]\n"),
			"rc: virtual_hosts[0].routes[0].request_headers_to_add[0].append: append and append_action may not both be set"},
		{"header value with newline", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: a, value: \"b\\r\\nx: y\"}}]\n"),
			"rc: virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: invalid header value \"b\\r\\nx: y\""},
		{"value and raw_value", "name: rc\nrequest_headers_to_add: [{header: {key: a, value: b, raw_value: Yw==}}]\n",
			"rc: request_headers_to_add[0].header: only one of value and raw_value may be set"},
		{"direct response too big", "name: rc\nmax_direct_response_body_size_bytes: 3\n" + strings.TrimPrefix(vh("  - match: {prefix: /}\n    direct_response: {status: 200, body: {inline_string: abcd}}\n"), "name: rc\n"),
			"rc: virtual_hosts[0].routes[0].direct_response.body: 4 bytes, more than max_direct_response_body_size_bytes (3)"},
		{"direct response status", vh("  - match: {prefix: /}\n    direct_response: {status: 100}\n"),
			"rc: virtual_hosts[0].routes[0].direct_response.status: 100 is not in [200, 599]"},
		{"direct response from file", vh("  - match: {prefix: /}\n    direct_response: {status: 200, body: {filename: /etc/passwd}}\n"),
			"rc: virtual_hosts[0].routes[0].direct_response.body.filename: not supported"},
		{"validate clusters", "name: rc\nvalidate_clusters: true\n", "rc: validate_clusters: true not supported: the waypoint resolves clusters per request"},
		{"separated prefix with slash", vh("  - match: {path_separated_prefix: /a/}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.path_separated_prefix: \"/a/\" must be non-empty, without '?' or '#', and not end in '/'"},
		{"no path specifier", vh("  - match: {headers: [{name: a}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match: one of prefix, path, safe_regex or path_separated_prefix is required"},
		{"no action", vh("  - match: {prefix: /}\n"), "rc: virtual_hosts[0].routes[0]: one of route, redirect or direct_response is required"},
		{"redirect port", vh("  - match: {prefix: /}\n    redirect: {port_redirect: 70000}\n"),
			"rc: virtual_hosts[0].routes[0].redirect.port_redirect: 70000 is not a port"},
		{"ignore_case with regex", vh("  - match: {prefix: /, headers: [{name: a, string_match: {safe_regex: {regex: a}, ignore_case: true}}]}\n    route: {cluster: c}\n"),
			"rc: virtual_hosts[0].routes[0].match.headers[0].string_match.ignore_case: has no effect with safe_regex (use (?i) in the pattern)"},
		{"negative timeout", vh("  - match: {prefix: /}\n    route: {cluster: c, timeout: -1s}\n"),
			"rc: virtual_hosts[0].routes[0].route.timeout: negative"},
		{"both rewrites", vh("  - match: {prefix: /}\n    route: {cluster: c, prefix_rewrite: /x, regex_rewrite: {pattern: {regex: a}, substitution: b}}\n"),
			"rc: virtual_hosts[0].routes[0].route.regex_rewrite: only one of prefix_rewrite and regex_rewrite may be set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileRoutes(parse(t, tc.yaml))
			wantNack(t, tc.name, err, tc.want)
		})
	}
}

// TestNackUnknownFields: fields this build's Envoy API does not know (sent
// by a newer control plane) are refused, not dropped.
func TestNackUnknownFields(t *testing.T) {
	rc := parse(t, vh("  - match: {prefix: /}\n    route: {cluster: c}\n"))
	// Field 9999 (varint 1) on the first route, as a newer Envoy API might send.
	r := rc.VirtualHosts[0].Routes[0]
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 9999, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	if err := proto.Unmarshal(b, r); err != nil {
		t.Fatal(err)
	}
	_, err = CompileRoutes(rc)
	want := "rc: virtual_hosts[0].routes[0]: unknown fields (not in this waypoint's Envoy API version)"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v; want %s", err, want)
	}
}

// TestAllowListNamesExist keeps the allow-list honest: every listed message
// type and field exists in the linked Envoy API, so a typo cannot disable a
// check or claim support for nothing.
func TestAllowListNamesExist(t *testing.T) {
	for msg, fields := range supported {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(msg)
		if err != nil {
			t.Errorf("%s: %v", msg, err)
			continue
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok {
			t.Errorf("%s is not a message", msg)
			continue
		}
		for _, f := range fields {
			fd := md.Fields().ByName(f)
			if fd == nil {
				t.Errorf("%s has no field %s", msg, f)
				continue
			}
			// A listed field whose message type is neither listed nor
			// opaque would be refused whenever it is set: support claimed
			// for nothing.
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if fd.Kind() != protoreflect.MessageKind {
				continue
			}
			typ := fd.Message().FullName()
			if _, ok := supported[typ]; !ok && !opaque[typ] && typ != "google.protobuf.Any" {
				t.Errorf("%s.%s has type %s, which the allow-list does not accept", msg, f, typ)
			}
		}
	}
	for msg := range opaque {
		if _, err := protoregistry.GlobalFiles.FindDescriptorByName(msg); err != nil {
			t.Errorf("opaque %s: %v", msg, err)
		}
	}
}

func TestCompileNil(t *testing.T) {
	if _, err := CompileRoutes(nil); err == nil {
		t.Fatal("nil route configuration compiled")
	}
}

// wantNack fails the test unless err, from compiling what, is a
// *NackError saying want.
func wantNack(t testing.TB, what string, err error, want string) {
	t.Helper()
	var ne *NackError
	if !errors.As(err, &ne) {
		t.Errorf("%s: error %T %v, want a *NackError %q", what, err, err, want)
		return
	}
	if err.Error() != want {
		t.Errorf("%s:\n got: %s\nwant: %s", what, err, want)
	}
}
