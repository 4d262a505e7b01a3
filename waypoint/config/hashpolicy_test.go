package config

import (
	"testing"
	"time"

	"github.com/zmesh/zmesh/waypoint/route"
)

func hashRoute(policies string) string {
	return vh("  - match: {prefix: /}\n    route:\n      cluster: c\n      hash_policy:\n" + policies)
}

func TestHashPolicyCompiled(t *testing.T) {
	table, err := CompileRoutes(parse(t, hashRoute(`      - header: {header_name: End-User}
      - cookie: {name: session, ttl: 1800s, path: /shop}
        terminal: true
      - connection_properties: {source_ip: true}
      - query_parameter: {name: user}
      - cookie: {name: plain}
`)))
	if err != nil {
		t.Fatal(err)
	}
	got := table.VirtualHosts[0].Routes[0].Forward.HashPolicies
	want := []route.HashPolicy{
		{Kind: route.HashHeader, Name: "end-user"},
		{Kind: route.HashCookie, Name: "session", GenerateCookie: true, CookieTTL: 30 * time.Minute, CookiePath: "/shop", Terminal: true},
		{Kind: route.HashSourceIP},
		{Kind: route.HashQueryParameter, Name: "user"},
		{Kind: route.HashCookie, Name: "plain"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d policies, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g := got[i]
		if g.Kind != want[i].Kind || g.Name != want[i].Name || g.GenerateCookie != want[i].GenerateCookie ||
			g.CookieTTL != want[i].CookieTTL || g.CookiePath != want[i].CookiePath || g.Terminal != want[i].Terminal {
			t.Errorf("policy %d: %+v, want %+v", i, g, want[i])
		}
	}
}

func TestHashPolicyNack(t *testing.T) {
	const at = "rc: virtual_hosts[0].routes[0].route.hash_policy"
	for _, tc := range []struct{ name, policies, want string }{
		{"header regex_rewrite", "      - header: {header_name: a, regex_rewrite: {pattern: {regex: a}, substitution: b}}\n",
			at + "[0].header.regex_rewrite: not supported"},
		{"cookie attributes", "      - cookie: {name: a, attributes: [{name: SameSite, value: Lax}]}\n",
			at + "[0].cookie.attributes: not supported"},
		{"filter_state", "      - filter_state: {key: k}\n", at + "[0].filter_state: not supported"},
		{"no specifier", "      - terminal: true\n",
			at + "[0]: one of header, cookie, connection_properties or query_parameter is required"},
		{"empty header name", "      - header: {header_name: \"\"}\n", at + "[0].header.header_name: required"},
		{"bad header name", "      - header: {header_name: \"a b\"}\n", at + "[0].header.header_name: \"a b\" is not a header name"},
		{"unknown pseudo-header", "      - header: {header_name: \":status\"}\n", at + "[0].header.header_name: \":status\" is not a header name"},
		{"bad cookie name", "      - cookie: {name: \"a;b\"}\n", at + "[0].cookie.name: \"a;b\" is not a cookie name"},
		{"bad cookie path", "      - cookie: {name: a, path: \"/x; Domain=evil\"}\n", at + "[0].cookie.path: \"/x; Domain=evil\" cannot be a cookie path"},
		{"negative ttl", "      - cookie: {name: a, ttl: -1s}\n", at + "[0].cookie.ttl: negative"},
		{"two generating cookies", "      - cookie: {name: a, ttl: 1s}\n      - cookie: {name: b, ttl: 1s}\n",
			at + "[1].cookie.ttl: only one cookie policy may generate a cookie (hash_policy[0] already does)"},
		{"source_ip false", "      - connection_properties: {source_ip: false}\n", at + "[0].connection_properties.source_ip: must be true"},
		{"query parameter without name", "      - query_parameter: {name: \"\"}\n", at + "[0].query_parameter.name: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileRoutes(parse(t, hashRoute(tc.policies)))
			wantNack(t, tc.name, err, tc.want)
		})
	}
}
