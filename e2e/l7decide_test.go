package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/route"
)

// compiledRoutes builds the waypoints of one controlplane/l7 golden input
// and compiles their route configurations, by name.
func compiledRoutes(t *testing.T, file string) map[string]*route.Table {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "controlplane", "l7", "testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	input, _ := golden.Parse(data).File("input.yaml")
	snap := modeltest.Decode(t, input)
	out := map[string]*route.Table{}
	for _, gw := range snap.Gateways {
		res := l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw)
		for _, rc := range res.Routes {
			table, err := config.CompileRoutes(rc)
			if err != nil {
				t.Fatalf("%s: %v", rc.Name, err)
			}
			out[rc.Name] = table
		}
	}
	return out
}

// decision is the part of a route decision a case checks; empty fields
// are not checked.
type decision struct {
	action    route.ActionKind
	cluster   string
	path      string
	authority string
	status    int
	location  string
}

type decideCase struct {
	name   string
	table  string
	method string
	path   string
	header http.Header
	want   decision
}

func checkDecisions(t *testing.T, tables map[string]*route.Table, cases []decideCase) {
	t.Helper()
	for _, c := range cases {
		table, ok := tables[c.table]
		if !ok {
			t.Fatalf("%s: no route configuration %s", c.name, c.table)
		}
		d := route.Decide(table, route.Request{Authority: "svc", Method: c.method, Path: c.path, Header: c.header})
		got := decision{action: d.Action, cluster: d.Cluster, path: d.Path, authority: d.Authority, status: d.Status, location: d.Location}
		if c.want.cluster == "" {
			got.cluster = ""
		}
		if c.want.path == "" {
			got.path = ""
		}
		if c.want.authority == "" {
			got.authority = ""
		}
		if got != c.want {
			t.Errorf("%s: %s %s → %+v, want %+v", c.name, c.method, c.path, got, c.want)
		}
	}
}

// shares counts, over 100 consecutive random values, where a weighted route
// sends requests: Envoy picks Random % total weight.
func shares(t *testing.T, table *route.Table, path string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for r := range uint64(100) {
		d := route.Decide(table, route.Request{Authority: "svc", Method: "GET", Path: path, Random: r})
		if d.Action != route.ActionForward {
			t.Fatalf("%s: action %v", path, d.Action)
		}
		out[d.Cluster]++
	}
	return out
}

const (
	reviews = "inbound-vip|9080|http|reviews.default.svc.cluster.local"
	v1      = "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
	v2      = "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"
	v3      = "inbound-vip|9080|http/v3|reviews.default.svc.cluster.local"
)

// TestL7VirtualServiceDecisions runs requests through the waypoint's route
// decision on what zmeshd builds from Istio's documented VirtualServices:
// the routing users expect, end to end through both translations.
func TestL7VirtualServiceDecisions(t *testing.T) {
	tables := compiledRoutes(t, "vs_routing.txtar")
	fwd := func(cluster string) decision { return decision{action: route.ActionForward, cluster: cluster} }
	checkDecisions(t, tables, []decideCase{
		{"jason goes to v1", reviews, "GET", "/reviews/0", http.Header{"End-User": {"jason"}}, fwd(v1)},
		{"others go to the default, v2", reviews, "GET", "/reviews/0", http.Header{"End-User": {"alice"}}, fwd(v2)},
		{"query routing", "inbound-vip|80|http|search.default.svc.cluster.local", "GET", "/SEARCH/books?version=v2&debug",
			http.Header{"X-Trace": {"1"}}, fwd(v2)},
		{"query routing: a header that must be absent", "inbound-vip|80|http|search.default.svc.cluster.local", "GET", "/search/books?version=v2&debug",
			http.Header{"X-Trace": {"1"}, "X-Canary": {"no"}}, fwd("inbound-vip|80|http|search.default.svc.cluster.local")},
		{"query routing: another method", "inbound-vip|80|http|search.default.svc.cluster.local", "POST", "/search/books?version=v2&debug",
			http.Header{"X-Trace": {"1"}}, fwd("inbound-vip|80|http|search.default.svc.cluster.local")},
		{"a rule for port 8080 only", "inbound-vip|8080|http|search.default.svc.cluster.local", "GET", "/static/x", nil, fwd(v3)},
		{"not on port 80", "inbound-vip|80|http|search.default.svc.cluster.local", "GET", "/static/x", nil, fwd("inbound-vip|80|http|search.default.svc.cluster.local")},
	})
	if got := shares(t, tables["inbound-vip|9080|http|split-80-20.default.svc.cluster.local"], "/"); got["inbound-vip|9080|http/v1|split-80-20.default.svc.cluster.local"] != 80 ||
		got["inbound-vip|9080|http/v2|split-80-20.default.svc.cluster.local"] != 20 {
		t.Errorf("80/20 split: %v", got)
	}
	if got := shares(t, tables["inbound-vip|9080|http|split-10-10-80.default.svc.cluster.local"], "/"); got["inbound-vip|9080|http/v1|split-10-10-80.default.svc.cluster.local"] != 10 ||
		got["inbound-vip|9080|http/v2|split-10-10-80.default.svc.cluster.local"] != 10 || got["inbound-vip|9080|http/v3|split-10-10-80.default.svc.cluster.local"] != 80 {
		t.Errorf("10/10/80 split: %v", got)
	}

	tables = compiledRoutes(t, "vs_policies.txtar")
	checkDecisions(t, tables, []decideCase{
		{"redirect", reviews, "GET", "/old?x=1", nil, decision{action: route.ActionRedirect, status: 308, location: "https://reviews.example.com:8443/new?x=1"}},
		{"prefix and authority rewrite", reviews, "GET", "/api/v1/books", nil, decision{action: route.ActionForward, cluster: v2, path: "/v2/books", authority: "reviews-v2"}},
		{"regex rewrite", reviews, "GET", "/legacy/a/b", nil, decision{action: route.ActionForward, cluster: v1, path: "/a/b"}},
		{"direct response", reviews, "GET", "/teapot", nil, decision{action: route.ActionDirectResponse, status: 418}},
		{"the last rule catches the rest", reviews, "GET", "/anything", nil, decision{action: route.ActionForward, cluster: v1}},
	})
	table := tables[reviews]
	for _, r := range table.VirtualHosts[0].Routes {
		switch r.Name {
		case "faulty":
			f, ok := r.Fault.(*fault.Fault)
			if !ok || f.Abort == nil || f.Abort.HTTPStatus != 503 || f.Abort.Percent != (fault.Percentage{Numerator: 500_000, Denominator: 1_000_000}) ||
				f.Delay == nil || f.Delay.Duration.Seconds() != 2 || f.Delay.Percent != (fault.Percentage{Numerator: 1_000_000, Denominator: 1_000_000}) {
				t.Errorf("route faulty: fault %#v", r.Fault)
			}
		case "never":
			// Istio: an abort without a percentage aborts no request.
			if f, ok := r.Fault.(*fault.Fault); !ok || f.Abort == nil || f.Abort.Percent.Numerator != 0 {
				t.Errorf("route never: fault %#v", r.Fault)
			}
		case "cors":
			if r.CORS == nil || len(r.CORS.AllowOrigins) != 2 {
				t.Errorf("route cors: policy %+v", r.CORS)
			}
		case "retried":
			if rp := r.Forward.Retry; rp == nil || rp.NumRetries != 3 || len(rp.RetriableStatusCodes) != 1 || r.Forward.Timeout.Seconds() != 2 {
				t.Errorf("route retried: retry %+v, timeout %v", rp, r.Forward.Timeout)
			}
		case "once":
			if r.Forward.Retry != nil {
				t.Errorf("route once: attempts 0 still retries: %+v", r.Forward.Retry)
			}
		case "mirrored":
			if len(r.Forward.Mirrors) != 2 || r.Forward.Mirrors[0].Cluster != v3 || r.Forward.Mirrors[0].PartsPerMillion != 100_000 ||
				r.Forward.Mirrors[1].Cluster != v2 || r.Forward.Mirrors[1].PartsPerMillion != 1_000_000 {
				t.Errorf("route mirrored: mirrors %+v", r.Forward.Mirrors)
			}
		}
	}

	tables = compiledRoutes(t, "vs_ignored.txtar")
	checkDecisions(t, tables, []decideCase{
		{"an exported VirtualService of another namespace, older, first", reviews, "GET", "/other", nil, decision{action: route.ActionForward, cluster: v1}},
		{"a clause matching on source labels is left out, not widened", reviews, "GET", "/by-source", nil, decision{action: route.ActionForward, cluster: v2}},
		{"an undefined subset is a 500", reviews, "GET", "/v9/x", nil, decision{action: route.ActionDirectResponse, status: 500}},
		{"the hidden VirtualService's v3 route is absent", reviews, "GET", "/", nil, decision{action: route.ActionForward, cluster: v2}},
	})
}

// TestL7GatewayAPIDecisions does the same for HTTPRoutes and GRPCRoutes:
// Gateway API precedence, segment prefixes, filters and 500s.
func TestL7GatewayAPIDecisions(t *testing.T) {
	const (
		echo   = "inbound-vip|80|http|echo.gamma.svc.cluster.local"
		echoV1 = "inbound-vip|8080|http|echo-v1.gamma.svc.cluster.local"
		echoV2 = "inbound-vip|8080|http|echo-v2.gamma.svc.cluster.local"
	)
	tables := compiledRoutes(t, "httproute_gamma.txtar")
	checkDecisions(t, tables, []decideCase{
		{"prefix with method, rewrite to / and Host set", echo, "GET", "/api/books?x=1", nil,
			decision{action: route.ActionForward, cluster: echoV2, path: "/books?x=1", authority: "echo.internal"}},
		{"the prefix is a whole segment", echo, "GET", "/apis", nil, decision{action: route.ActionForward}},
		{"prefix with a header and a query regex", echo, "POST", "/api?debug=true", http.Header{"X-Canary": {"yes"}},
			decision{action: route.ActionForward, cluster: echoV2, path: "/?debug=true"}},
		{"no header, no method: the split", echo, "POST", "/api", nil, decision{action: route.ActionForward}},
		{"exact path first: redirect", echo, "GET", "/old", nil, decision{action: route.ActionRedirect, status: 301, location: "https://echo.example.com/new"}},
		{"full path rewrite", echo, "GET", "/rewrite/a/b", nil, decision{action: route.ActionForward, cluster: echoV1, path: "/index.html", authority: "echo-v1"}},
		{"no valid backend: 500", echo, "GET", "/gone", nil, decision{action: route.ActionDirectResponse, status: 500}},
		{"unsupported filter: 500", echo, "GET", "/ext/1", nil, decision{action: route.ActionDirectResponse, status: 500}},
	})
	if got := shares(t, tables[echo], "/split"); got[echoV1] != 80 || got[echoV2] != 20 {
		t.Errorf("80/20 HTTPRoute split: %v", got)
	}

	tables = compiledRoutes(t, "httproute_mixed.txtar")
	checkDecisions(t, tables, []decideCase{
		{"the HTTPRoute wins over the VirtualService", echo, "GET", "/", nil, decision{action: route.ActionForward, cluster: echoV2}},
		{"a route attached to the waypoint Gateway", "inbound-vip|8080|http|echo-v1.gamma.svc.cluster.local", "GET", "/", nil, decision{action: route.ActionForward, cluster: echoV1}},
	})

	const rpc = "inbound-vip|9000|http|echo.gamma.svc.cluster.local"
	tables = compiledRoutes(t, "grpcroute.txtar")
	checkDecisions(t, tables, []decideCase{
		{"service and method exact", rpc, "POST", "/echo.Echo/Stream", nil, decision{action: route.ActionForward, cluster: echoV2}},
		{"method with a header", rpc, "POST", "/other.Svc/Ping", http.Header{"X-Tenant": {"acme"}}, decision{action: route.ActionForward}},
		{"method without the header: no route", rpc, "POST", "/other.Svc/Ping", nil, decision{}},
		{"regex", rpc, "POST", "/echo.Admin/GetUser", nil, decision{action: route.ActionForward}},
	})
	if got := shares(t, tables[rpc], "/echo.Echo/Say"); got[echoV1] != 90 || got[echoV2] != 10 {
		t.Errorf("90/10 GRPCRoute split: %v", got)
	}
}

// TestL7ConsumerRouteDecisions: consumer routes (HTTPRoutes of another
// namespace than their parent Service's) route their own namespace's
// clients only, told apart by the peer principal the tunnel proved; every
// other client, and a request without a peer principal, gets the
// producer's routes.
func TestL7ConsumerRouteDecisions(t *testing.T) {
	const (
		echo80   = "inbound-vip|80|http|echo.mesh.svc.cluster.local"
		echo8080 = "inbound-vip|8080|http|echo.mesh.svc.cluster.local"
		echoV2   = "inbound-vip|80|http|echo-v2.mesh.svc.cluster.local"
		consumer = "spiffe://cluster.local/ns/consumer/sa/default"
		other    = "spiffe://cluster.local/ns/other/sa/client"
		producer = "spiffe://cluster.local/ns/mesh/sa/default"
		// grpcClient's namespace has a GRPCRoute for echo-v2.
		grpcClient = "spiffe://cluster.local/ns/grpc-client/sa/default"
	)
	tables := compiledRoutes(t, "httproute_consumer.txtar")
	cases := []struct {
		name, table, path, peer string
		header                  http.Header
		route                   string // the deciding route's name
		status                  int    // a direct response's status
	}{
		{"consumer client: its route", echo80, "/api/x", consumer, nil, "consumer.add-header.0.0", 0},
		{"consumer client: a backend needing a ReferenceGrant is a 500", echo80, "/v2", consumer, nil, "consumer.add-header.1.0", 500},
		{"consumer client: no rule of its routes matches", echo80, "/other", consumer, nil, "no-route|consumer", 404},
		{"producer client", echo80, "/api/x", producer, nil, "mesh.producer.0.0", 0},
		{"client of a namespace with routes for another port", echo80, "/api/x", other, nil, "mesh.producer.0.0", 0},
		{"that namespace's route on its port", echo8080, "/api/x", other, nil, "other.port-scoped.0.0", 0},
		{"no peer principal", echo80, "/api/x", "", nil, "mesh.producer.0.0", 0},
		{"a header does not make a consumer client", echo80, "/api/x", producer,
			http.Header{"X-Forwarded-Client-Cert": {"URI=" + consumer}, "Io.istio.peer_principal": {consumer}}, "mesh.producer.0.0", 0},
		{"no producer route: the default after the consumer block", echoV2, "/x", producer, nil, "default", 0},
		{"no producer route: the consumer's own", echoV2, "/v2/x", consumer, nil, "consumer.to-v2.0.0", 0},
		{"no producer route: the consumer's 404", echoV2, "/x", consumer, nil, "no-route|consumer", 404},
		{"a GRPCRoute consumer's method", echoV2, "/echo.Echo/Call", grpcClient, nil, "grpc-client.echo-call.0.0", 0},
		{"another method of that GRPCRoute's namespace", echoV2, "/echo.Echo/Other", grpcClient, nil, "no-route|grpc-client", 404},
		{"that method for another namespace's client", echoV2, "/echo.Echo/Call", producer, nil, "default", 0},
	}
	for _, c := range cases {
		d := route.Decide(tables[c.table], route.Request{Authority: "svc", Method: "GET", Path: c.path, Header: c.header, PeerPrincipal: c.peer})
		name := ""
		if d.Route != nil {
			name = d.Route.Name
		}
		if name != c.route || d.Status != c.status {
			t.Errorf("%s: route %q status %d, want %q %d", c.name, name, d.Status, c.route, c.status)
		}
	}
}
