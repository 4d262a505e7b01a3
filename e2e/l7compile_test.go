package e2e

import (
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
)

// routeClusters are the clusters a compiled route sends to or mirrors to.
func routeClusters(r *route.Route) []string {
	if r.Forward == nil {
		return nil
	}
	var out []string
	if r.Forward.Cluster != "" {
		out = append(out, r.Forward.Cluster)
	}
	for _, w := range r.Forward.Weighted {
		out = append(out, w.Name)
	}
	for _, m := range r.Forward.Mirrors {
		out = append(out, m.Cluster)
	}
	return out
}

// TestL7ResourcesCompile builds every waypoint of controlplane/l7's golden
// inputs and compiles the route configurations, clusters and endpoints with
// the waypoint's own config package: whatever zmeshd sends, the waypoint
// accepts (no NACK), and every cluster a route names exists.
func TestL7ResourcesCompile(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "controlplane", "l7", "testdata", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no controlplane/l7 golden inputs")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, ok := golden.Parse(data).File("input.yaml")
			if !ok {
				t.Fatal("no input.yaml")
			}
			snap := modeltest.Decode(t, input)
			built := 0
			for _, gw := range snap.Gateways {
				res := l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw)
				clusters, err := config.CompileClusters(res.Clusters)
				if err != nil {
					t.Fatalf("waypoint %s/%s: clusters refused: %v", gw.Namespace, gw.Name, err)
				}
				las, err := config.CompileAssignments(res.Endpoints)
				if err != nil {
					t.Fatalf("waypoint %s/%s: endpoints refused: %v", gw.Namespace, gw.Name, err)
				}
				if len(clusters) != len(res.Clusters) || len(las) != len(res.Endpoints) {
					t.Fatalf("compiled %d clusters, %d assignments; built %d, %d", len(clusters), len(las), len(res.Clusters), len(res.Endpoints))
				}
				for name := range clusters {
					if _, ok := las[name]; !ok {
						t.Errorf("cluster %s has no load assignment", name)
					}
				}
				for _, rc := range res.Routes {
					table, err := config.CompileRoutes(rc)
					if err != nil {
						t.Fatalf("waypoint %s/%s: routes refused: %v", gw.Namespace, gw.Name, err)
					}
					for _, vh := range table.VirtualHosts {
						for _, r := range vh.Routes {
							for _, c := range routeClusters(r) {
								if _, ok := clusters[c]; !ok {
									t.Errorf("routes %s: route %q names cluster %s, which is not built", rc.Name, r.Name, c)
								}
							}
						}
					}
				}
				built += len(res.Clusters)
			}
			if built == 0 {
				t.Fatal("no cluster built: the input binds nothing")
			}
		})
	}
}

// waypointChains builds the waypoints of one controlplane/l7 golden input
// and compiles their listeners with the waypoint's own compiler; every
// RBAC filter is also compiled alone, so that a refusal names it.
func waypointChains(t *testing.T, file string) map[netip.AddrPort]*config.Chain {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "controlplane", "l7", "testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	input, _ := golden.Parse(data).File("input.yaml")
	return compiledChains(t, modeltest.Decode(t, input))
}

// compiledChains builds the waypoints of snap and compiles their listeners
// as waypointChains does.
func compiledChains(t *testing.T, snap *model.Snapshot) map[netip.AddrPort]*config.Chain {
	t.Helper()
	out := map[netip.AddrPort]*config.Chain{}
	for _, gw := range snap.Gateways {
		res := l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw)
		for _, l := range res.Listeners {
			for _, fc := range l.GetFilterChains() {
				for _, f := range fc.GetFilters() {
					hcm := &hcmv3.HttpConnectionManager{}
					if f.GetTypedConfig().MessageIs(hcm) {
						if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
							t.Fatal(err)
						}
					}
					for i, hf := range hcm.GetHttpFilters() {
						if hf.GetName() != rbac.FilterName {
							continue
						}
						cfg := &rbacfilterv3.RBAC{}
						if err := hf.GetTypedConfig().UnmarshalTo(cfg); err != nil {
							t.Fatal(err)
						}
						if _, err := config.CompileRBAC(fmt.Sprintf("%s http_filters[%d]", fc.GetName(), i), cfg); err != nil {
							t.Fatalf("waypoint %s/%s: RBAC filter refused: %v", gw.Namespace, gw.Name, err)
						}
					}
				}
			}
			chains, _, err := config.CompileListener(l)
			if err != nil {
				t.Fatalf("waypoint %s/%s: listener refused: %v", gw.Namespace, gw.Name, err)
			}
			maps.Copy(out, chains)
		}
	}
	return out
}

// TestL7AuthorizationCompiles compiles the listener of every
// controlplane/l7 golden input, RBAC filters included, with the waypoint's
// compiler: zmeshd never sends an AuthorizationPolicy translation the
// waypoint refuses. The authz_* inputs must yield RBAC filters.
func TestL7AuthorizationCompiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "controlplane", "l7", "testdata", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(name, func(t *testing.T) {
			chains := waypointChains(t, name)
			filters := 0
			for _, c := range chains {
				for _, f := range c.HTTPFilters {
					if f.RBAC != nil {
						filters++
					}
				}
			}
			if strings.HasPrefix(name, "authz_") && filters == 0 {
				t.Fatal("no RBAC filter compiled from an AuthorizationPolicy input")
			}
			// A chain whose HTTP requests are checked checks the bytes of
			// its TCP half too: non-HTTP bytes must not skip the policies.
			for dst, c := range chains {
				if c.Protocol == config.ChainSniff && hasRBAC(c.HTTPFilters) && !hasRBAC(c.TCPFilters) {
					t.Errorf("%s (%s): HTTP checked by RBAC, raw bytes not", dst, c.Name)
				}
			}
		})
	}
}

func hasRBAC(fs []config.HTTPFilter) bool {
	for _, f := range fs {
		if f.RBAC != nil {
			return true
		}
	}
	return false
}

// authzCase is one request through a compiled chain's RBAC filters.
type authzCase struct {
	name string
	file string
	dst  string // VIP:port, which picks the chain
	// tcp: a connection through the chain's TCP filters (a TCP port, or
	// raw bytes on a sniffed port), with no HTTP attributes.
	tcp bool
	req rbac.Request
	// want is the chain's outcome: "allow" or "403", then each filter's
	// deciding policy ("-" when none decided), e.g. "403 deny:-
	// allow:-".
	want string
}

// chainOutcome runs the chain's RBAC filters in order, as the proxy does
// (for HTTP, the tunnel's filters first, then the request's): the first
// denial answers 403 RBAC: access denied.
func chainOutcome(c *config.Chain, req *rbac.Request, tcp bool) string {
	var parts []string
	fs := append(append([]config.HTTPFilter(nil), c.ConnFilters...), c.HTTPFilters...)
	if tcp {
		fs = c.TCPFilters
	}
	for _, f := range fs {
		if f.RBAC == nil {
			continue
		}
		d := rbac.Evaluate(f.RBAC, req)
		p := d.Policy
		if p == "" {
			p = "-"
		}
		kind := "?"
		if f.RBAC.Rules != nil {
			kind = strings.ToLower(f.RBAC.Rules.Action.String())
		} else if f.RBAC.Shadow != nil {
			kind = "shadow-" + strings.ToLower(f.RBAC.Shadow.Action.String())
		}
		s := kind + ":" + p
		if d.ShadowPolicy != "" {
			s += fmt.Sprintf("(shadow %s %s)", d.Shadow, d.ShadowPolicy)
		}
		parts = append(parts, s)
		if !d.Allowed {
			return fmt.Sprintf("%d %s", rbac.DeniedStatus, strings.Join(parts, " "))
		}
	}
	return strings.Join(append([]string{"allow"}, parts...), " ")
}

func httpReq(method, path string, h http.Header) route.Request {
	if h == nil {
		h = http.Header{}
	}
	return route.Request{Method: method, Path: path, Authority: "svc", Header: h}
}

// TestL7AuthorizationDecisions runs requests through the RBAC filters
// zmeshd builds for the authz_* golden inputs and compiled by the
// waypoint: DENY before ALLOW, an ALLOW policy denies what matches none,
// AUDIT only logs, dry-run only reports, CUSTOM denies what it would have
// asked about, L4 fields decide at the waypoint, and the deciding policy
// carries istiod's name.
func TestL7AuthorizationDecisions(t *testing.T) {
	sleep := "spiffe://cluster.local/ns/shop/sa/sleep"
	peer := netip.MustParseAddr("10.244.0.5")
	cases := []authzCase{
		{name: "allowed GET /api from sleep", file: "authz_gateway.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/api/items?x=1", nil), Principal: sleep, DirectRemoteIP: peer, RemoteIP: peer},
			want: "allow deny:- allow:ns[shop]-policy[allow-api]-rule[0]"},
		{name: "POST matches no ALLOW rule", file: "authz_gateway.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("POST", "/api/items", nil), Principal: sleep, DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 deny:- allow:-"},
		{name: "L4 DENY on ipBlocks wins over ALLOW", file: "authz_gateway.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/api/items", nil), Principal: sleep, DirectRemoteIP: netip.MustParseAddr("192.0.2.9")},
			want: "403 deny:ns[shop]-policy[deny-l4]-rule[0]"},
		{name: "notIpBlocks carves out of the L4 DENY", file: "authz_gateway.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/api/items", nil), Principal: sleep, DirectRemoteIP: netip.MustParseAddr("192.0.2.7")},
			want: "allow deny:- allow:ns[shop]-policy[allow-api]-rule[0]"},
		{name: "L4 DENY on port 9000 from another namespace", file: "authz_gateway.txtar", dst: "10.96.0.10:9000",
			req: rbac.Request{HTTP: httpReq("GET", "/api/items", nil), Principal: "spiffe://cluster.local/ns/other/sa/x",
				DirectRemoteIP: peer, DestinationIP: netip.MustParseAddr("10.96.0.10"), DestinationPort: 9000},
			want: "403 deny:ns[shop]-policy[deny-l4]-rule[1]"},

		// TCP chains: the same policies as network RBAC filters, with
		// istiod's TCP semantics for HTTP attributes.
		{name: "TCP port: the ALLOW's only rule uses methods and paths, so no connection is allowed", file: "authz_gateway.txtar", dst: "10.96.0.10:5432", tcp: true,
			req:  rbac.Request{Principal: sleep, DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 deny:- allow:-"},
		{name: "TCP port: the L4 DENY on ipBlocks", file: "authz_gateway.txtar", dst: "10.96.0.10:5432", tcp: true,
			req:  rbac.Request{Principal: sleep, DirectRemoteIP: netip.MustParseAddr("192.0.2.9"), RemoteIP: netip.MustParseAddr("192.0.2.9")},
			want: "403 deny:ns[shop]-policy[deny-l4]-rule[0]"},
		{name: "sniffed port, raw bytes: the L4 DENY on port 9000 from another namespace", file: "authz_gateway.txtar", dst: "10.96.0.10:9000", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/other/sa/x", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 deny:ns[shop]-policy[deny-l4]-rule[1]"},
		{name: "TCP: ALLOW's L4 rule allows app on 5432, AUDIT ignores its path", file: "authz_tcp.txtar", dst: "10.96.0.20:5432", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/shop/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "allow log:ns[shop]-policy[audit-path]-rule[0] deny:- allow:ns[shop]-policy[allow-mixed]-rule[2]"},
		{name: "TCP: requestPrincipals and header rules of the ALLOW are left out", file: "authz_tcp.txtar", dst: "10.96.0.20:5432", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/shop/sa/other", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 log:ns[shop]-policy[audit-path]-rule[0] deny:- allow:-"},
		{name: "TCP: DENY with methods and paths denies every connection from outside the namespace", file: "authz_tcp.txtar", dst: "10.96.0.20:5432", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/other/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 log:ns[shop]-policy[audit-path]-rule[0] deny:ns[shop]-policy[deny-method]-rule[0]"},
		{name: "TCP: DENY with a header condition denies every connection from legacy", file: "authz_tcp.txtar", dst: "10.96.0.20:5432", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/legacy/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 log:ns[shop]-policy[audit-path]-rule[0] deny:ns[shop]-policy[deny-header]-rule[0]"},
		{name: "TCP: dry-run DENY reports only", file: "authz_tcp.txtar", dst: "10.96.0.20:5432", tcp: true,
			req: rbac.Request{Principal: "spiffe://cluster.local/ns/shop/sa/app", DirectRemoteIP: netip.MustParseAddr("198.51.100.4"),
				RemoteIP: netip.MustParseAddr("198.51.100.4")},
			want: "allow log:ns[shop]-policy[audit-path]-rule[0] deny:-(shadow denied ns[shop]-policy[dry-deny]-rule[0]) allow:ns[shop]-policy[allow-mixed]-rule[2]"},
		{name: "sniffed port, raw bytes: the ALLOW's L4 rule names 5432 only", file: "authz_tcp.txtar", dst: "10.96.0.20:7000", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/shop/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 log:ns[shop]-policy[audit-path]-rule[0] deny:- allow:-"},
		{name: "sniffed port, HTTP: the ALLOW's method rule applies as written", file: "authz_tcp.txtar", dst: "10.96.0.20:7000",
			req:  rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/shop/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "allow log:- deny:- allow:ns[shop]-policy[allow-mixed]-rule[0]"},
		{name: "sniffed port, HTTP: the DENY needs DELETE /admin", file: "authz_tcp.txtar", dst: "10.96.0.20:7000",
			req:  rbac.Request{HTTP: httpReq("DELETE", "/admin", nil), Principal: "spiffe://cluster.local/ns/other/sa/app", DirectRemoteIP: peer, RemoteIP: peer},
			want: "403 log:- deny:ns[shop]-policy[deny-method]-rule[0]"},

		// Policies on the waypoint as a workload: network RBAC heading
		// every chain, then the chain's own (targetRefs) filters; each
		// scope's ALLOW must allow.
		{name: "workload ALLOW names client-a, then the Gateway's ALLOW of GET", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/shop/sa/client-a", DirectRemoteIP: peer, RemoteIP: peer, DestinationPort: 8000},
			want: "allow deny:- allow:ns[shop]-policy[allow-client-a]-rule[0] allow:ns[shop]-policy[allow-get]-rule[0]"},
		{name: "client-a allowed at L4, its POST not by the Gateway's ALLOW", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("POST", "/", nil), Principal: "spiffe://cluster.local/ns/shop/sa/client-a", DirectRemoteIP: peer, RemoteIP: peer, DestinationPort: 8000},
			want: "403 deny:- allow:ns[shop]-policy[allow-client-a]-rule[0] allow:-"},
		{name: "client-b's workload rule uses methods, so it is left out: refused at L4", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/shop/sa/client-b", DirectRemoteIP: peer, RemoteIP: peer, DestinationPort: 8000},
			want: "403 deny:- allow:-"},
		{name: "root-namespace DENY of namespace evil", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/evil/sa/x", DirectRemoteIP: peer, RemoteIP: peer, DestinationPort: 8000},
			want: "403 deny:ns[istio-system]-policy[root-deny]-rule[0]"},
		{name: "workload ALLOW by ipBlocks and port, from a trusted namespace outside the pod range", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/trusted/sa/x",
				DirectRemoteIP: netip.MustParseAddr("10.244.9.4"), RemoteIP: netip.MustParseAddr("10.244.9.4"), DestinationPort: 8000},
			want: "allow deny:- allow:ns[shop]-policy[allow-l7]-rule[1] allow:ns[shop]-policy[allow-get]-rule[0]"},
		{name: "namespace DENY on notPrincipals, notNamespaces and source.ip notValues", file: "authz_workload.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/", nil), Principal: "spiffe://cluster.local/ns/other/sa/x",
				DirectRemoteIP: netip.MustParseAddr("192.0.2.4"), RemoteIP: netip.MustParseAddr("192.0.2.4"), DestinationPort: 8000},
			want: "403 deny:ns[shop]-policy[deny-ns]-rule[0]"},
		{name: "TCP: the namespace DENY's path is ignored, so it denies port 5432", file: "authz_workload.txtar", dst: "10.96.0.10:5432", tcp: true,
			req:  rbac.Request{Principal: "spiffe://cluster.local/ns/shop/sa/client-a", DirectRemoteIP: peer, RemoteIP: peer, DestinationPort: 5432},
			want: "403 deny:ns[shop]-policy[deny-ns]-rule[1]"},

		{name: "allow-nothing, but GET is allowed by the other policy", file: "authz_actions.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/", nil)},
			want: "allow log:- deny:- allow:ns[shop]-policy[allow-get]-rule[0]"},
		{name: "AUDIT logs a POST that ALLOW then denies", file: "authz_actions.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("POST", "/", nil)},
			want: "403 log:ns[shop]-policy[audit-writes]-rule[0] deny:- allow:-"},
		{name: "DENY before ALLOW", file: "authz_actions.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/admin/users", nil)},
			want: "403 log:- deny:ns[shop]-policy[deny-admin]-rule[0]"},
		{name: "CUSTOM denies what it would ask about", file: "authz_actions.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/private/key", nil)},
			want: "403 log:- deny:ns[shop]-policy[ext-authz]-rule[0]"},
		{name: "dry-run DENY reports only", file: "authz_actions.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/debug/pprof", nil)},
			want: "allow log:- deny:-(shadow denied ns[shop]-policy[deny-debug-dry]-rule[0]) allow:ns[shop]-policy[allow-get]-rule[0]"},

		{name: "path template {*} and {**}", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/users/42/orders/2024/01", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok"},
			want: "allow deny:- allow:ns[shop]-policy[paths]-rule[1]"},
		{name: "{*} is one segment", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/users/a/b/orders/1", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok"},
			want: "403 deny:- allow:-"},
		{name: "notPaths template", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/users/42/orders/secret", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok"},
			want: "403 deny:- allow:-"},
		{name: "claims, audiences and request principal", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/other", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok", RequestPrincipal: "https://issuer.example.com/bob", Claims: []rbac.Claim{
				{Path: []string{"groups"}, Values: []string{"dev", "ops-eu"}},
				{Path: []string{"realm", "role"}, Values: []string{"editor"}},
				{Path: []string{"aud"}, Values: []string{"httpbin"}},
			}},
			want: "allow deny:- allow:ns[shop]-policy[paths]-rule[3]"},
		{name: "a claim missing", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/other", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok", RequestPrincipal: "https://issuer.example.com/bob", Claims: []rbac.Claim{
				{Path: []string{"groups"}, Values: []string{"ops-eu"}},
				{Path: []string{"aud"}, Values: []string{"httpbin"}},
			}},
			want: "403 deny:- allow:-"},
		{name: "DENY ignores an invalid ipBlocks list: the rule denies by notPrincipals alone", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/status/ok", nil), Principal: "spiffe://cluster.local/ns/shop/sa/other"},
			want: "403 deny:ns[shop]-policy[deny-unknown]-rule[1]"},
		{name: "DENY ignores an unknown when key: every POST is denied", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("POST", "/status/ok", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok"},
			want: "403 deny:ns[shop]-policy[deny-unknown]-rule[0]"},
		{name: "from and when on L4 and L7 attributes", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/nothing-else", http.Header{"X-Tenant": {"blue"}}), Principal: "spiffe://cluster.local/ns/shop/sa/admin",
				DirectRemoteIP: peer, RemoteIP: netip.MustParseAddr("203.0.113.5"), RequestPrincipal: "https://issuer.example.com/alice"},
			want: "allow deny:- allow:ns[shop]-policy[paths]-rule[4]"},
		{name: "remote.ip notValues", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/nothing-else", http.Header{"X-Tenant": {"blue"}}), Principal: "spiffe://cluster.local/ns/shop/sa/admin",
				DirectRemoteIP: peer, RemoteIP: netip.MustParseAddr("203.0.113.9"), RequestPrincipal: "https://issuer.example.com/alice"},
			want: "403 deny:- allow:-"},
		{name: "header notValues", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req: rbac.Request{HTTP: httpReq("GET", "/nothing-else", http.Header{"X-Tenant": {"blue-test"}}), Principal: "spiffe://cluster.local/ns/shop/sa/admin",
				DirectRemoteIP: peer, RemoteIP: netip.MustParseAddr("203.0.113.5"), RequestPrincipal: "https://issuer.example.com/alice"},
			want: "403 deny:- allow:-"},
		{name: "prefix form", file: "authz_paths_when.txtar", dst: "10.96.0.10:8000",
			req:  rbac.Request{HTTP: httpReq("GET", "/status/ok", nil), Principal: "spiffe://cluster.local/ns/shop/sa/ok"},
			want: "allow deny:- allow:ns[shop]-policy[paths]-rule[0]"},

		{name: "Service-targeted ALLOW on reviews", file: "authz_service.txtar", dst: "10.96.0.20:9080",
			req:  rbac.Request{HTTP: route.Request{Method: "GET", Path: "/", Authority: "Reviews.Shop.svc.cluster.local", Header: http.Header{}}},
			want: "allow deny:- allow:ns[shop]-policy[reviews-only]-rule[0]"},
		{name: "reviews: another authority", file: "authz_service.txtar", dst: "10.96.0.20:9080",
			req:  rbac.Request{HTTP: route.Request{Method: "GET", Path: "/", Authority: "evil", Header: http.Header{}}},
			want: "403 deny:- allow:-"},
		{name: "ratings has no ALLOW policy; its DELETE DENY and the mesh-wide DENY apply", file: "authz_service.txtar", dst: "10.96.0.21:9080",
			req:  rbac.Request{HTTP: httpReq("POST", "/", nil)},
			want: "allow deny:-"},
		{name: "mesh-wide DENY on a header", file: "authz_service.txtar", dst: "10.96.0.21:9080",
			req:  rbac.Request{HTTP: httpReq("GET", "/", http.Header{"X-Evil": {"1"}})},
			want: "403 deny:ns[istio-system]-policy[mesh-wide]-rule[0]"},
		{name: "targetRef (singular) DENY", file: "authz_service.txtar", dst: "10.96.0.21:9080",
			req:  rbac.Request{HTTP: httpReq("DELETE", "/", nil)},
			want: "403 deny:ns[shop]-policy[legacy]-rule[0]"},
	}
	compiled := map[string]map[netip.AddrPort]*config.Chain{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			chains, ok := compiled[c.file]
			if !ok {
				chains = waypointChains(t, c.file)
				compiled[c.file] = chains
			}
			ch := chains[netip.MustParseAddrPort(c.dst)]
			if ch == nil {
				t.Fatalf("no chain for %s", c.dst)
			}
			req := c.req
			if !req.DestinationIP.IsValid() {
				ap := netip.MustParseAddrPort(c.dst)
				req.DestinationIP, req.DestinationPort = ap.Addr(), ap.Port()
			}
			if got := chainOutcome(ch, &req, c.tcp); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}
