package route_test

import (
	"net/http"
	"os"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/route"
)

// FuzzDecide feeds arbitrary requests (they come from peers) to the golden
// tables and checks Decide never panics and keeps its promises: a forward
// names a cluster and keeps the query string of a path it did not rewrite
// by regex, a redirect has a 3xx status and a Location with a scheme.
func FuzzDecide(f *testing.F) {
	var tables []*route.Table
	for _, name := range []string{"query_regex_rewrite", "redirect", "header_mutations", "virtual_hosts", "istio_weighted"} {
		data, err := os.ReadFile("testdata/" + name + ".txtar")
		if err != nil {
			f.Fatal(err)
		}
		y, _ := golden.Parse(data).File("routes.yaml")
		tables = append(tables, compileYAML(f, y))
	}
	f.Add(uint8(0), "svc", "/q?version=v%32&id=1", "x-env", "prod", uint64(7))
	f.Add(uint8(1), "www.example.com:80", "/item/book?x#frag", "", "", uint64(0))
	f.Add(uint8(3), "[::1]:8080", "/", "Host", "a", uint64(1<<63))
	f.Fuzz(func(t *testing.T, which uint8, authority, path, hname, hvalue string, random uint64) {
		req := route.Request{Authority: authority, Method: "GET", Path: path, Header: http.Header{}, Random: random}
		if hname != "" {
			req.Header[http.CanonicalHeaderKey(hname)] = []string{hvalue}
		}
		d := route.Decide(tables[int(which)%len(tables)], req)
		switch d.Action {
		case route.ActionForward:
			if d.Cluster == "" {
				t.Fatalf("forward without a cluster: %+v", d)
			}
			if d.Route.Forward.RegexRewrite == nil {
				if _, q, ok := strings.Cut(path, "?"); ok && !strings.HasSuffix(d.Path, "?"+q) {
					t.Fatalf("path %q rewritten to %q lost its query", path, d.Path)
				}
			}
		case route.ActionRedirect:
			if d.Status < 300 || d.Status > 399 || !strings.Contains(d.Location, "://") {
				t.Fatalf("redirect %d %q", d.Status, d.Location)
			}
		}
	})
}

// FuzzCompile feeds arbitrary route configurations (protojson) to the
// compiler: it must refuse or compile without panicking, and a compiled
// table must route without panicking.
func FuzzCompile(f *testing.F) {
	f.Add(`{"virtual_hosts":[{"name":"a","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`)
	f.Add(`{"virtual_hosts":[{"name":"a","domains":["x.*"],"routes":[{"match":{"safe_regex":{"regex":"/a(b)"}},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"(b)"},"substitution":"\\1\\\\"}}}]}]}`)
	f.Add(`{"virtual_hosts":[{"name":"a","domains":["*.x"],"routes":[{"match":{"path":"/"},"redirect":{"https_redirect":true,"port_redirect":1}}]}]}`)
	f.Add(`{"virtual_hosts":[{"name":"a","domains":["*"],"routes":[{"match":{"prefix":"/","filter_state":[{"key":"io.istio.peer_principal","string_match":{"safe_regex":{"regex":"spiffe://[^/]+/ns/a/sa/[^/]+"}}}]},"direct_response":{"status":404}}]}]}`)
	f.Fuzz(func(t *testing.T, js string) {
		rc := &routev3.RouteConfiguration{}
		if protojson.Unmarshal([]byte(js), rc) != nil {
			return
		}
		table, err := config.CompileRoutes(rc)
		if err != nil {
			return
		}
		for _, p := range []string{"/", "/ab", "/a/b?c=d", ""} {
			route.Decide(table, route.Request{Authority: "y.x", Path: p, Header: http.Header{}})
			route.Decide(table, route.Request{Authority: "y.x", Path: p, Header: http.Header{}, PeerPrincipal: "spiffe://td/ns/a/sa/b"})
		}
	})
}
