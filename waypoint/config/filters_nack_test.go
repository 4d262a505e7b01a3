package config

import (
	"strings"
	"testing"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/internal/testutil"
)

// policy wraps one permission and one principal (YAML flow maps) in an
// ALLOW RBAC filter with a policy named p.
func policy(perm, prin string) string {
	return "rules:\n  action: ALLOW\n  policies:\n    p:\n      permissions: [" + perm + "]\n      principals: [" + prin + "]\n"
}

// TestNackRBAC checks that every unsupported or invalid RBAC field is
// refused with an error naming its full path.
func TestNackRBAC(t *testing.T) {
	anyP := "{any: true}"
	cases := []struct{ yaml, want string }{
		{policy(anyP, "{filterState: {key: io.istio.local_principal, stringMatch: {exact: x}}}"),
			`rbac: rules.policies["p"].principals[0].filter_state.key: "io.istio.local_principal" not supported (only "io.istio.peer_principal")`},
		{policy(anyP, "{filterState: {key: io.istio.peer_principal, addressMatch: {}}}"),
			`rbac: rules.policies["p"].principals[0].filter_state.address_match: not supported`},
		{policy("{requestedServerName: {exact: x}}", anyP),
			`rbac: rules.policies["p"].permissions[0].requested_server_name: not supported`},
		{policy("{andRules: {rules: [{orRules: {rules: [{any: true}, {sourcedMetadata: {metadataMatcher: {filter: x}}}]}}]}}", anyP),
			`rbac: rules.policies["p"].permissions[0].and_rules.rules[0].or_rules.rules[1].sourced_metadata: not supported`},
		{"rules:\n  action: ALLOW\n  policies:\n    p:\n      permissions: [{any: true}]\n      principals: [{any: true}]\n      condition: {id: 1}\n",
			`rbac: rules.policies["p"].condition: not supported`},
		{"matcher: {matcherList: {}}\n", `rbac: matcher: not supported`},
		{"rules: {action: ALLOW, auditLoggingOptions: {auditCondition: ON_DENY}}\n", `rbac: rules.audit_logging_options: not supported`},
		{"trackPerRuleStats: true\n", `rbac: track_per_rule_stats: not supported`},
		{"shadowRules:\n  action: DENY\n  policies:\n    q:\n      permissions: [{any: true}]\n      principals: [{authenticated: {principalName: {exact: a, ignoreCase: true}}}, {custom: {name: x}}]\n",
			`rbac: shadow_rules.policies["q"].principals[1].custom: not supported`},
		// values
		{policy(anyP, "{directRemoteIp: {addressPrefix: 10.0.0.300, prefixLen: 8}}"),
			`rbac: rules.policies["p"].principals[0].direct_remote_ip.address_prefix: "10.0.0.300" is not an IP address`},
		{policy(anyP, "{remoteIp: {addressPrefix: 10.0.0.0, prefixLen: 33}}"),
			`rbac: rules.policies["p"].principals[0].remote_ip.prefix_len: 33 is longer than the address (32 bits)`},
		{policy("{destinationPort: 70000}", anyP),
			`rbac: rules.policies["p"].permissions[0].destination_port: 70000 is not a port`},
		{policy("{destinationPortRange: {start: 90, end: 80}}", anyP),
			`rbac: rules.policies["p"].permissions[0].destination_port_range: [90, 80) is not a port range`},
		{policy("{any: false}", anyP), `rbac: rules.policies["p"].permissions[0].any: must be true`},
		{policy("{orRules: {}}", anyP), `rbac: rules.policies["p"].permissions[0].or_rules.rules: at least one rule is required`},
		{policy(anyP, "{andIds: {}}"), `rbac: rules.policies["p"].principals[0].and_ids.ids: at least one principal is required`},
		{policy("{header: {name: x, stringMatch: {safeRegex: {regex: '('}}}}", anyP),
			"rbac: rules.policies[\"p\"].permissions[0].header.string_match.safe_regex.regex: invalid RE2 regex \"(\": error parsing regexp: missing closing ): `(`"},
		{policy("{urlPath: {path: {prefix: ''}}}", anyP), `rbac: rules.policies["p"].permissions[0].url_path.path: empty pattern`},
		{policy(anyP, "{metadata: {filter: envoy.filters.http.jwt_authn, path: [{key: p}], value: {presentMatch: true}}}"),
			`rbac: rules.policies["p"].principals[0].metadata.filter: "envoy.filters.http.jwt_authn" not supported (only "istio_authn")`},
		{policy(anyP, "{metadata: {filter: istio_authn, path: [{key: request.auth.audiences}], value: {stringMatch: {exact: a}}}}"),
			`rbac: rules.policies["p"].principals[0].metadata.path: ["request.auth.audiences"] not supported (only [request.auth.principal] and [request.auth.claims, claim...])`},
		{policy(anyP, "{metadata: {filter: istio_authn, path: [{key: request.auth.claims}, {key: g}], value: {doubleMatch: {exact: 1}}}}"),
			`rbac: rules.policies["p"].principals[0].metadata.value.double_match: not supported`},
		{policy(anyP, "{metadata: {filter: istio_authn, path: [{key: request.auth.claims}, {key: g}], value: {listMatch: {oneOf: {listMatch: {oneOf: {presentMatch: true}}}}}}}"),
			`rbac: rules.policies["p"].principals[0].metadata.value.list_match.one_of.list_match: nested lists not supported`},
		{"rules:\n  action: ALLOW\n  policies:\n    '':\n      permissions: [{any: true}]\n      principals: [{any: true}]\n",
			`rbac: rules.policies[""]: a policy name is required`},
		{"rules:\n  action: ALLOW\n  policies:\n    p:\n      permissions: [{any: true}]\n",
			`rbac: rules.policies["p"].principals: at least one principal is required`},
	}
	for _, c := range cases {
		cfg := &rbacfilterv3.RBAC{}
		testutil.ProtoYAML(t, c.yaml, cfg)
		_, err := CompileRBAC("rbac", cfg)
		wantNack(t, c.yaml, err, c.want)
	}
}

// TestNackRBACDepth: a peer-independent bound on nesting, so that a
// configuration cannot make evaluation recurse without limit.
func TestNackRBACDepth(t *testing.T) {
	perm := "{any: true}"
	for range 40 {
		perm = "{notRule: " + perm + "}"
	}
	cfg := &rbacfilterv3.RBAC{}
	testutil.ProtoYAML(t, policy(perm, "{any: true}"), cfg)
	_, err := CompileRBAC("rbac", cfg)
	if err == nil || !strings.Contains(err.Error(), "nested deeper than 32") {
		t.Fatalf("got %v, want a depth refusal", err)
	}
}

func TestNackFault(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"delay: {headerDelay: {}, percentage: {numerator: 1}}\n", `f: delay.header_delay: not supported`},
		{"abort: {headerAbort: {}}\n", `f: abort.header_abort: not supported`},
		{"upstreamCluster: c\n", `f: upstream_cluster: not supported`},
		{"downstreamNodes: [a]\n", `f: downstream_nodes: not supported`},
		{"responseRateLimit: {fixedLimit: {limitKbps: 1}}\n", `f: response_rate_limit: not supported`},
		{"delayPercentRuntime: x\n", `f: delay_percent_runtime: not supported`},
		{"abort: {percentage: {numerator: 1}}\n", `f: abort: http_status or grpc_status is required`},
		{"abort: {httpStatus: 100}\n", `f: abort.http_status: 100 is not in [200, 600)`},
		{"abort: {grpcStatus: 17}\n", `f: abort.grpc_status: 17 is not a gRPC status code (0-16)`},
		{"delay: {percentage: {numerator: 1}}\n", `f: delay.fixed_delay: required`},
		{"delay: {fixedDelay: -1s}\n", `f: delay.fixed_delay: negative`},
		{"maxActiveFaults: 0\n", `f: max_active_faults: 0 disables every fault`},
		{"headers: [{name: x, rangeMatch: {start: 1, end: 2}}]\n", `f: headers[0].range_match: not supported`},
	}
	for _, c := range cases {
		cfg := &faultv3.HTTPFault{}
		testutil.ProtoYAML(t, c.yaml, cfg)
		_, err := CompileFault("f", cfg)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got: %v\nwant: %s", c.yaml, err, c.want)
		}
	}
}

// TestNackFaultPerRoute: a per-route entry's errors carry its place in the
// route configuration.
func TestNackFaultPerRoute(t *testing.T) {
	cfg := &faultv3.HTTPFault{}
	testutil.ProtoYAML(t, "abort: {httpStatus: 700}\n", cfg)
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const at = `virtual_hosts[0].routes[1].typed_per_filter_config["envoy.filters.http.fault"]`
	_, err = CompileFaultPerRoute(at, a)
	if want := at + ".abort.http_status: 700 is not in [200, 600)"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	other, _ := anypb.New(&rbacfilterv3.RBAC{})
	_, err = CompileFaultPerRoute(at, other)
	if want := at + ": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC is not an HTTPFault"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
