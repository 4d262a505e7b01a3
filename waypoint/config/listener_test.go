package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
)

const (
	hcmType  = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	tcpType  = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	inspType = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
	rbacType = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	nrbType  = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
	fltType  = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	rtrType  = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
)

// hcm is an HTTP chain's filter (YAML flow map) with the given http_filters
// before the router.
func hcm(name, filters string) string {
	if filters != "" {
		filters += ", "
	}
	return `{name: envoy.filters.network.http_connection_manager, typedConfig: {"@type": ` + hcmType + `, statPrefix: "` + name +
		`", codecType: AUTO, normalizePath: true, mergeSlashes: true, pathWithEscapedSlashesAction: KEEP_UNCHANGED, rds: {routeConfigName: "` + name +
		`", configSource: {ads: {}, resourceApiVersion: V3}}, httpFilters: [` + filters +
		`{name: envoy.filters.http.router, typedConfig: {"@type": ` + rtrType + `}}]}}`
}

// netRBAC is a TCP chain's network RBAC filter (YAML flow map) with the
// given fields.
func netRBAC(fields string) string {
	return `{name: envoy.filters.network.rbac, typedConfig: {"@type": ` + nrbType + `, statPrefix: tcp., ` + fields + `}}`
}

func tcp(name string) string {
	return `{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": ` + tcpType + `, statPrefix: "` + name + `", cluster: "` + name + `"}}`
}

// chain is a filter chain (YAML flow map) on port with the VIPs in vips
// (a YAML list of prefix ranges), extra match fields, and one filter.
func chain(name, port, vips, extra, filter string) string {
	return `{name: "` + name + `", filterChainMatch: {destinationPort: ` + port + `, prefixRanges: ` + vips + extra + `}, filters: [` + filter + `]}`
}

const (
	inspector = "listenerFilters: [{name: envoy.filters.listener.http_inspector, typedConfig: {\"@type\": " + inspType + "}}]\n"
	vipA      = "[{addressPrefix: 10.96.0.1, prefixLen: 32}, {addressPrefix: 'fd00::1', prefixLen: 128}]"
	vipB      = "[{addressPrefix: 10.96.0.2, prefixLen: 32}]"
	alpn      = ", applicationProtocols: [http/1.0, http/1.1, h2c]"
	httpA     = "inbound-vip|80|http|a.ns.svc.cluster.local"
	tcpA      = "inbound-vip|80|tcp|a.ns.svc.cluster.local"
	httpB     = "inbound-vip|8080|http|b.ns.svc.cluster.local"
	tcpB      = "inbound-vip|9000|tcp|b.ns.svc.cluster.local"
)

func listener(chains ...string) string {
	return "name: main_internal\naddress: {socketAddress: {address: 0.0.0.0, portValue: 15008}}\n" + inspector +
		"filterChains:\n  - " + strings.Join(chains, "\n  - ") + "\n"
}

// istioListener is the contract's shape: a sniffed port (HTTP + TCP chain,
// dual-stack VIPs; a network RBAC filter on the TCP half), a known-HTTP
// port with RBAC and fault filters, a TCP port with network RBAC filters.
func istioListener() string {
	return listener(
		chain(httpA, "80", vipA, alpn, hcm(httpA, "")),
		chain(tcpA, "80", vipA, "", netRBAC(`rules: {action: DENY, policies: {ns1.deny: {permissions: [{any: true}], principals: [{any: true}]}}}`)+", "+tcp(tcpA)),
		chain(httpB, "8080", vipB, "", hcm(httpB,
			`{name: envoy.filters.http.rbac, typedConfig: {"@type": `+rbacType+`, rules: {action: DENY, policies: {ns1.deny: {permissions: [{any: true}], principals: [{any: true}]}}}}}, `+
				`{name: envoy.filters.http.fault, typedConfig: {"@type": `+fltType+`}}`)),
		chain(tcpB, "9000", vipB, "", netRBAC(`rules: {action: LOG, policies: {ns1.audit: {permissions: [{any: true}], principals: [{any: true}]}}}`)+", "+
			netRBAC(`rules: {action: ALLOW, policies: {ns1.allow: {permissions: [{destinationPort: 9000}], principals: [{directRemoteIp: {addressPrefix: 10.0.0.0, prefixLen: 8}}]}}}, `+
				`shadowRules: {action: ALLOW, policies: {ns1.dry: {permissions: [{any: true}], principals: [{any: true}]}}}, shadowRulesStatPrefix: istio_dry_run_allow_`)+", "+tcp(tcpB)),
	)
}

func TestCompileListener(t *testing.T) {
	l := testutil.ProtoYAML(t, istioListener(), &listenerv3.Listener{})
	chains, routes, err := CompileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{httpB, httpA}; !slices.Equal(routes, want) {
		t.Errorf("routes %q, want %q", routes, want)
	}
	if len(chains) != 4 {
		t.Errorf("%d destinations, want 4: %v", len(chains), chains)
	}
	ap := netip.MustParseAddrPort
	sniff4, sniff6 := chains[ap("10.96.0.1:80")], chains[ap("[fd00::1]:80")]
	if sniff4 == nil || sniff4 != sniff6 {
		t.Fatalf("dual-stack sniffed chain: %+v and %+v, want one shared chain", sniff4, sniff6)
	}
	if sniff4.Protocol != ChainSniff || sniff4.Name != httpA || sniff4.RouteConfig != httpA || sniff4.TCPCluster != tcpA ||
		sniff4.StatPrefix != httpA || !sniff4.NormalizePath || !sniff4.MergeSlashes || len(sniff4.HTTPFilters) != 0 {
		t.Errorf("sniffed chain %+v", sniff4)
	}
	// The TCP half's network RBAC filter checks the bytes that are not
	// HTTP; the HTTP half has none.
	if f := sniff4.TCPFilters; len(f) != 1 || f[0].Name != "envoy.filters.network.rbac" || f[0].RBAC == nil || f[0].RBAC.Rules == nil ||
		f[0].RBAC.Rules.Action != rbac.ActionDeny || len(f[0].RBAC.Rules.Policies) != 1 || f[0].RBAC.Rules.Policies[0].Name != "ns1.deny" {
		t.Errorf("sniffed chain's TCP filters %+v", f)
	}
	h := chains[ap("10.96.0.2:8080")]
	if h == nil || h.Protocol != ChainHTTP || h.RouteConfig != httpB || h.TCPCluster != "" || len(h.HTTPFilters) != 2 ||
		h.HTTPFilters[0].RBAC == nil || h.HTTPFilters[0].Name != rbacFilterName || h.HTTPFilters[1].Fault == nil {
		t.Errorf("HTTP chain %+v", h)
	}
	c := chains[ap("10.96.0.2:9000")]
	if c == nil || c.Protocol != ChainTCP || c.TCPCluster != tcpB || c.RouteConfig != "" || len(c.TCPFilters) != 2 {
		t.Fatalf("TCP chain %+v", c)
	}
	if f := c.TCPFilters[0].RBAC; f == nil || f.Rules.Action != rbac.ActionLog || f.RulesStatPrefix != "tcp." {
		t.Errorf("TCP chain's first filter %+v, want the LOG engine", f)
	}
	if f := c.TCPFilters[1].RBAC; f == nil || f.Rules.Action != rbac.ActionAllow || f.Shadow == nil || f.ShadowRulesStatPrefix != "istio_dry_run_allow_" {
		t.Errorf("TCP chain's second filter %+v, want the ALLOW engine with shadow rules", f)
	}
	// The compiled ALLOW decides a connection on its L4 attributes.
	in := &rbac.Request{DirectRemoteIP: netip.MustParseAddr("10.1.2.3"), RemoteIP: netip.MustParseAddr("10.1.2.3"), DestinationIP: netip.MustParseAddr("10.96.0.2"), DestinationPort: 9000}
	out := *in
	out.DirectRemoteIP = netip.MustParseAddr("192.0.2.1")
	if d := rbac.Evaluate(c.TCPFilters[1].RBAC, in); !d.Allowed || d.Policy != "ns1.allow" {
		t.Errorf("connection from 10.1.2.3: %+v, want allowed by ns1.allow", d)
	}
	if d := rbac.Evaluate(c.TCPFilters[1].RBAC, &out); d.Allowed {
		t.Errorf("connection from 192.0.2.1: %+v, want denied", d)
	}
	if c := chains[ap("10.96.0.1:8080")]; c != nil {
		t.Errorf("a VIP of another service on the port has a chain: %+v", c)
	}
}

// TestNackListener checks that every unsupported or invalid listener
// field, and every conflict between chains, is refused with an error
// naming its path.
func TestNackListener(t *testing.T) {
	hA, tA, hB := chain(httpA, "80", vipA, alpn, hcm(httpA, "")), chain(tcpA, "80", vipA, "", tcp(tcpA)), chain(httpB, "8080", vipB, "", hcm(httpB, ""))
	withHCM := func(field string) string {
		return listener(chain(httpB, "8080", vipB, "", strings.Replace(hcm(httpB, ""), "codecType: AUTO", field, 1)))
	}
	pre := `listeners "main_internal": `
	cases := []struct{ yaml, want string }{
		{listener(hB) + "useOriginalDst: true\n", pre + "use_original_dst: not supported"},
		{strings.Replace(listener(hB), "name: main_internal", "name: ''", 1), `listeners "": name: required`},
		{"name: main_internal\nlistenerFilters: [{name: envoy.filters.listener.tls_inspector}]\nfilterChains: [" + hB + "]\n",
			pre + `listener_filters[0].name: "envoy.filters.listener.tls_inspector" not supported (only "envoy.filters.listener.http_inspector")`},
		{"name: main_internal\nfilterChains: [" + hA + ", " + tA + "]\n",
			pre + "filter_chains[0].filter_chain_match.application_protocols: set but the listener has no envoy.filters.listener.http_inspector listener filter to detect them"},
		{listener(hA, tA, chain(tcpA, "80", vipB, "", tcp(tcpA))), pre + `filter_chains[2].name: "inbound-vip|80|tcp|a.ns.svc.cluster.local" is also filter_chains[1]'s name`},
		{listener(`{name: x, filters: [` + tcp("x") + `]}`), pre + "filter_chains[0].filter_chain_match: required: a chain serves the destinations it names"},
		{listener(chain("x", "80", vipB, ", serverNames: [a.example]", tcp("x"))), pre + "filter_chains[0].filter_chain_match.server_names: not supported"},
		{listener(chain("x", "80", vipB, ", sourcePrefixRanges: [{addressPrefix: 10.0.0.0, prefixLen: 8}]", tcp("x"))),
			pre + "filter_chains[0].filter_chain_match.source_prefix_ranges: not supported"},
		{listener(`{name: x, filterChainMatch: {prefixRanges: ` + vipB + `}, filters: [` + tcp("x") + `]}`),
			pre + "filter_chains[0].filter_chain_match.destination_port: required"},
		{listener(chain("x", "70000", vipB, "", tcp("x"))), pre + "filter_chains[0].filter_chain_match.destination_port: 70000 is not a port"},
		{listener(`{name: x, filterChainMatch: {destinationPort: 80}, filters: [` + tcp("x") + `]}`),
			pre + "filter_chains[0].filter_chain_match.prefix_ranges: required: the service's VIPs"},
		{listener(chain("x", "80", "[{addressPrefix: 10.96.0.0, prefixLen: 16}]", "", tcp("x"))),
			pre + "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: must be 32 (one address)"},
		{listener(chain("x", "80", "[{addressPrefix: 10.96.0.1}]", "", tcp("x"))),
			pre + "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: must be 32 (one address)"},
		{listener(chain("x", "80", "[{addressPrefix: a.example, prefixLen: 32}]", "", tcp("x"))),
			pre + `filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix: "a.example" is not an IP address`},
		{listener(chain("x", "80", "[{addressPrefix: 10.96.0.2, prefixLen: 32}, {addressPrefix: '::ffff:10.96.0.2', prefixLen: 32}]", "", tcp("x"))),
			pre + "filter_chains[0].filter_chain_match.prefix_ranges[1]: 10.96.0.2 listed twice"},
		{listener(chain("x", "80", vipB, ", applicationProtocols: [h2c]", hcm("x", ""))),
			pre + `filter_chains[0].filter_chain_match.application_protocols: ["h2c"] not supported (only the sniffed set ["http/1.0", "http/1.1", "h2c"])`},
		{listener(chain("x", "80", vipB, alpn, tcp("x"))),
			pre + "filter_chains[0].filter_chain_match.application_protocols: set on a TCP chain (only a sniffed port's HTTP chain has them)"},
		{listener(hA), pre + "filter_chains[0].filter_chain_match.application_protocols: destination 10.96.0.1:80 sniffs for HTTP but no TCP chain matches it for the other bytes"},
		// duplicate destinations name both chains
		{listener(hB, chain("y", "8080", vipB, "", hcm("y", ""))),
			pre + `filter_chains[1].filter_chain_match: destination 10.96.0.2:8080 is also matched by filter_chains[0] ("inbound-vip|8080|http|b.ns.svc.cluster.local")`},
		{listener(hB, chain("y", "8080", vipB, "", tcp("y"))),
			pre + `filter_chains[1].filter_chain_match: destination 10.96.0.2:8080 is also matched by filter_chains[0] ("inbound-vip|8080|http|b.ns.svc.cluster.local")`},
		{listener(tA, chain("y", "80", "[{addressPrefix: 'fd00::1', prefixLen: 128}]", "", tcp("y"))),
			pre + `filter_chains[1].filter_chain_match: destination [fd00::1]:80 is also matched by filter_chains[0] ("inbound-vip|80|tcp|a.ns.svc.cluster.local")`},
		{listener(hA, tA, chain("y", "80", vipA, alpn, hcm("y", ""))),
			pre + `filter_chains[2].filter_chain_match: destination 10.96.0.1:80 is also matched by filter_chains[0] ("inbound-vip|80|http|a.ns.svc.cluster.local")`},
		// filters
		{listener(chain("x", "80", vipB, "", tcp("x")+", "+tcp("x"))),
			pre + `filter_chains[0].filters[0].name: "envoy.filters.network.tcp_proxy" not supported before envoy.filters.network.tcp_proxy (only envoy.filters.network.rbac)`},
		{listener(`{name: x, filterChainMatch: {destinationPort: 80, prefixRanges: ` + vipB + `}}`),
			pre + "filter_chains[0].filters: no filters; envoy.filters.network.rbac filters then one envoy.filters.network.http_connection_manager or one envoy.filters.network.tcp_proxy are supported"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.rbac}`)),
			pre + `filter_chains[0].filters[0].name: "envoy.filters.network.rbac" not supported as a chain's last filter (only envoy.filters.network.http_connection_manager and envoy.filters.network.tcp_proxy)`},
		// network RBAC: before a tcp_proxy or a connection manager, with
		// the HTTP filter's rules and their NACKs
		{listener(chain("x", "80", vipB, "", hcm("x", "")+", "+hcm("x", ""))),
			pre + `filter_chains[0].filters[0].name: "envoy.filters.network.http_connection_manager" not supported before envoy.filters.network.http_connection_manager (only envoy.filters.network.rbac)`},
		{listener(chain("x", "80", vipB, "", netRBAC("delayDeny: 1s")+", "+hcm("x", ""))),
			pre + "filter_chains[0].filters[0].typed_config.delay_deny: not supported"},
		{listener(chain("x", "80", vipB, "", netRBAC("rules: {action: DENY}")+", "+tcp("x")+", "+tcp("x"))),
			pre + `filter_chains[0].filters[1].name: "envoy.filters.network.tcp_proxy" not supported before envoy.filters.network.tcp_proxy (only envoy.filters.network.rbac)`},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.rbac}, `+tcp("x"))), pre + "filter_chains[0].filters[0].typed_config: required"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.rbac, typedConfig: {"@type": `+rbacType+`}}, `+tcp("x"))),
			pre + "filter_chains[0].filters[0].typed_config: " + rbacType + " is not a envoy.extensions.filters.network.rbac.v3.RBAC"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.rbac, typedConfig: {"@type": `+nrbType+`, rules: {action: DENY}}}, `+tcp("x"))),
			pre + "filter_chains[0].filters[0].typed_config.stat_prefix: required"},
		{listener(chain("x", "80", vipB, "", netRBAC("enforcementType: CONTINUOUS")+", "+tcp("x"))),
			pre + "filter_chains[0].filters[0].typed_config.enforcement_type: not supported"},
		{listener(chain("x", "80", vipB, "", netRBAC("delayDeny: 1s")+", "+tcp("x"))),
			pre + "filter_chains[0].filters[0].typed_config.delay_deny: not supported"},
		{listener(chain("x", "80", vipB, "", netRBAC("matcher: {matcherList: {}}")+", "+tcp("x"))),
			pre + "filter_chains[0].filters[0].typed_config.matcher: not supported"},
		{listener(chain("x", "80", vipB, "", netRBAC("rules: {action: ALLOW, policies: {p: {permissions: [{requestedServerName: {exact: x}}], principals: [{any: true}]}}}")+", "+tcp("x"))),
			pre + `filter_chains[0].filters[0].typed_config.rules.policies["p"].permissions[0].requested_server_name: not supported`},
		{listener(chain("x", "80", vipB, "", netRBAC("shadowRules: {action: DENY, policies: {p: {permissions: [{any: true}]}}}")+", "+tcp("x"))),
			pre + `filter_chains[0].filters[0].typed_config.shadow_rules.policies["p"].principals: at least one principal is required`},
		{listener(chain("x", "80", vipB, "", netRBAC("rules: {action: 3}")+", "+tcp("x"))),
			pre + `filter_chains[0].filters[0].typed_config.rules.action: 3 not supported`},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.tcp_proxy}`)), pre + "filter_chains[0].filters[0].typed_config: required"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": `+hcmType+`, statPrefix: x}}`)),
			pre + "filter_chains[0].filters[0].typed_config: " + hcmType + " is not a envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": `+tcpType+`, statPrefix: x, weightedClusters: {clusters: [{name: a, weight: 1}]}}}`)),
			pre + "filter_chains[0].filters[0].typed_config.weighted_clusters: not supported"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": `+tcpType+`, cluster: x}}`)),
			pre + "filter_chains[0].filters[0].typed_config.stat_prefix: required"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": `+tcpType+`, statPrefix: x}}`)),
			pre + "filter_chains[0].filters[0].typed_config.cluster: required"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.http_connection_manager, typedConfig: {"@type": `+hcmType+`, statPrefix: x, routeConfig: {name: x}}}`)),
			pre + "filter_chains[0].filters[0].typed_config.route_config: not supported"},
		{withHCM("codecType: HTTP2"), pre + "filter_chains[0].filters[0].typed_config.codec_type: HTTP2 not supported (only AUTO)"},
		{withHCM("codecType: AUTO, useRemoteAddress: true"), pre + "filter_chains[0].filters[0].typed_config.use_remote_address: not supported"},
		{withHCM("codecType: AUTO, xffNumTrustedHops: 1"), pre + "filter_chains[0].filters[0].typed_config.xff_num_trusted_hops: not supported"},
		{withHCM("codecType: AUTO, requestIdExtension: {}"), pre + "filter_chains[0].filters[0].typed_config.request_id_extension: not supported"},
		{strings.Replace(withHCM("codecType: AUTO"), "pathWithEscapedSlashesAction: KEEP_UNCHANGED", "pathWithEscapedSlashesAction: REJECT_REQUEST", 1),
			pre + "filter_chains[0].filters[0].typed_config.path_with_escaped_slashes_action: REJECT_REQUEST not supported (only KEEP_UNCHANGED)"},
		{strings.Replace(withHCM("codecType: AUTO"), "ads: {}, ", "", 1),
			pre + "filter_chains[0].filters[0].typed_config.rds.config_source.ads: required: routes come over the same ADS stream"},
		{strings.Replace(withHCM("codecType: AUTO"), "routeConfigName: \""+httpB+"\", ", "", 1),
			pre + "filter_chains[0].filters[0].typed_config.rds.route_config_name: required"},
		{listener(chain("x", "80", vipB, "", `{name: envoy.filters.network.http_connection_manager, typedConfig: {"@type": `+hcmType+`, statPrefix: x, rds: {routeConfigName: x, configSource: {ads: {}, resourceApiVersion: V3}}}}`)),
			pre + "filter_chains[0].filters[0].typed_config.http_filters: the last filter must be envoy.filters.http.router"},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.router}`))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].name: envoy.filters.http.router must be the last filter"},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.cors}`))),
			pre + `filter_chains[0].filters[0].typed_config.http_filters[0].name: "envoy.filters.http.cors" not supported (only envoy.filters.http.jwt_authn, envoy.filters.http.rbac, envoy.filters.http.fault and envoy.filters.http.router)`},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.rbac, isOptional: true, typedConfig: {"@type": `+rbacType+`}}`))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].is_optional: not supported"},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.rbac, typedConfig: {"@type": `+fltType+`}}`))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: " + fltType + " is not a envoy.extensions.filters.http.rbac.v3.RBAC"},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.rbac, typedConfig: {"@type": `+rbacType+`, rules: {action: ALLOW, policies: {p: {permissions: [{requestedServerName: {exact: x}}], principals: [{any: true}]}}}}}`))),
			pre + `filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.policies["p"].permissions[0].requested_server_name: not supported`},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.rbac, typedConfig: {"@type": `+rbacType+`, rules: {action: ALLOW, policies: {p: {permissions: [{destinationPort: 70000}], principals: [{any: true}]}}}}}`))),
			pre + `filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.policies["p"].permissions[0].destination_port: 70000 is not a port`},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.fault, typedConfig: {"@type": `+fltType+`, abort: {httpStatus: 700}}}`))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.abort.http_status: 700 is not in [200, 600)"},
		{listener(chain("x", "80", vipB, "", hcm("x", `{name: envoy.filters.http.fault, typedConfig: {"@type": `+fltType+`, upstreamCluster: x}}`))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.upstream_cluster: not supported"},
		{listener(chain("x", "80", vipB, "", strings.Replace(hcm("x", ""), `"@type": `+rtrType, `"@type": `+rtrType+`, suppressEnvoyHeaders: true`, 1))),
			pre + "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.suppress_envoy_headers: not supported"},
	}
	for _, c := range cases {
		l := testutil.ProtoYAML(t, c.yaml, &listenerv3.Listener{})
		_, _, err := CompileListener(l)
		wantNack(t, c.yaml, err, c.want)
	}
}

// TestCompileConnFilters: network RBAC filters before a connection manager
// (the policies on the waypoint as a workload) become the chain's
// ConnFilters, in order, and a sniffed port's joined chain keeps its HTTP
// half's; the TCP half keeps its own TCPFilters.
func TestCompileConnFilters(t *testing.T) {
	deny := netRBAC(`rules: {action: DENY, policies: {ns1.deny: {permissions: [{any: true}], principals: [{directRemoteIp: {addressPrefix: 192.0.2.0, prefixLen: 24}}]}}}`)
	allow := netRBAC(`rules: {action: ALLOW, policies: {ns1.allow: {permissions: [{any: true}], principals: [{filterState: {key: io.istio.peer_principal, stringMatch: {exact: "spiffe://cluster.local/ns/a/sa/client"}}}]}}}`)
	l := testutil.ProtoYAML(t, listener(
		chain(httpA, "80", vipA, alpn, deny+", "+allow+", "+hcm(httpA, "")),
		chain(tcpA, "80", vipA, "", deny+", "+allow+", "+tcp(tcpA)),
		chain(httpB, "8080", vipB, "", allow+", "+hcm(httpB, "")),
	), &listenerv3.Listener{})
	chains, _, err := CompileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	sniff, http := chains[ap("10.96.0.1:80")], chains[ap("10.96.0.2:8080")]
	if sniff == nil || sniff.Protocol != ChainSniff || len(sniff.ConnFilters) != 2 || len(sniff.TCPFilters) != 2 {
		t.Fatalf("sniffed chain %+v", sniff)
	}
	if sniff.ConnFilters[0].RBAC.Rules.Action != rbac.ActionDeny || sniff.ConnFilters[1].RBAC.Rules.Action != rbac.ActionAllow {
		t.Errorf("sniffed chain's connection filters out of order: %+v", sniff.ConnFilters)
	}
	if http == nil || http.Protocol != ChainHTTP || len(http.ConnFilters) != 1 || len(http.HTTPFilters) != 0 {
		t.Fatalf("HTTP chain %+v", http)
	}
	in := &rbac.Request{Principal: "spiffe://cluster.local/ns/a/sa/client", DirectRemoteIP: netip.MustParseAddr("10.0.0.1")}
	if d := rbac.Evaluate(http.ConnFilters[0].RBAC, in); !d.Allowed || d.Policy != "ns1.allow" {
		t.Errorf("allowed principal: %+v", d)
	}
	other := *in
	other.Principal = "spiffe://cluster.local/ns/a/sa/other"
	if d := rbac.Evaluate(http.ConnFilters[0].RBAC, &other); d.Allowed {
		t.Errorf("other principal allowed: %+v", d)
	}
}
