package route_test

import (
	"flag"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/route"
)

var update = flag.Bool("update", false, "rewrite the expected decisions in testdata/*.txtar")

// TestGolden runs every testdata/*.txtar archive. An archive holds:
//
//   - routes.yaml: one envoy.config.route.v3.RouteConfiguration in protojson
//     form, written as YAML; it is compiled with config.CompileRoutes.
//   - cases: one request per line, "METHOD AUTHORITY PATH [TOKEN...] ->
//     DECISION". A token is random=N (the weighted pick's random number),
//     scheme=https, peer=SPIFFE-ID (the tunnel's peer principal),
//     resp:NAME=VALUE (a header of the upstream's response, to show
//     response header mutations) or NAME=VALUE (a request header; repeat it
//     for several values). DECISION is what formatDecision prints.
//     Blank lines and #-comments are kept.
//
// With -update the DECISION parts are rewritten from the current behaviour.
func TestGolden(t *testing.T) {
	golden.RunCases(t, *update, func(t *testing.T, ar golden.Archive) func(string) (string, error) {
		routesYAML, ok := ar.File("routes.yaml")
		if !ok {
			t.Fatal("archive has no routes.yaml")
		}
		table := compileYAML(t, routesYAML)
		return func(line string) (string, error) {
			req, resp, err := parseRequest(line)
			if err != nil {
				return "", err
			}
			return formatDecision(route.Decide(table, req), req, resp), nil
		}
	})
}

func compileYAML(t testing.TB, y []byte) *route.Table {
	t.Helper()
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("routes.yaml: %v", err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(js, rc); err != nil {
		t.Fatalf("routes.yaml: %v", err)
	}
	table, err := config.CompileRoutes(rc)
	if err != nil {
		t.Fatalf("compile routes.yaml: %v", err)
	}
	return table
}

func parseRequest(s string) (route.Request, http.Header, error) {
	f := strings.Fields(s)
	if len(f) < 3 {
		return route.Request{}, nil, fmt.Errorf("want METHOD AUTHORITY PATH, got %q", s)
	}
	req := route.Request{Method: f[0], Authority: f[1], Path: f[2], Header: http.Header{}}
	resp := http.Header{}
	for _, tok := range f[3:] {
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			return req, nil, fmt.Errorf("token %q is not NAME=VALUE", tok)
		}
		switch {
		case k == "random":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return req, nil, fmt.Errorf("random: %v", err)
			}
			req.Random = n
		case k == "scheme":
			req.Scheme = v
		case k == "peer":
			req.PeerPrincipal = v
		case strings.HasPrefix(k, "resp:"):
			resp.Add(strings.TrimPrefix(k, "resp:"), v)
		default:
			req.Header.Add(k, v)
		}
	}
	return req, resp, nil
}

// formatDecision is the golden form of a decision: the action, the virtual
// host and route names, what the action carries, and, when the route
// changes headers, the request's and the upstream response's headers after
// the mutations (as "name=value" sorted, values of one header joined by ",").
func formatDecision(d route.Decision, req route.Request, resp http.Header) string {
	if d.Action == route.ActionNone {
		return "no-route"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s vh=%s route=%s", d.Action, d.VirtualHost.Name, d.Route.Name)
	switch d.Action {
	case route.ActionForward:
		f := d.Route.Forward
		fmt.Fprintf(&b, " cluster=%s", d.Cluster)
		if d.Path != req.Path {
			fmt.Fprintf(&b, " path=%s", d.Path)
		}
		if d.Authority != req.Authority {
			fmt.Fprintf(&b, " authority=%s", d.Authority)
		}
		fmt.Fprintf(&b, " timeout=%s", f.Timeout)
		if r := f.Retry; r != nil {
			fmt.Fprintf(&b, " retry=%s/%d", strings.Join(r.RetryOn, ","), r.NumRetries)
			if r.PerTryTimeout > 0 {
				fmt.Fprintf(&b, "/per-try=%s", r.PerTryTimeout)
			}
			if len(r.RetriableStatusCodes) > 0 {
				fmt.Fprintf(&b, "/codes=%v", r.RetriableStatusCodes)
			}
			if r.RetryOtherHosts {
				fmt.Fprintf(&b, "/other-hosts(%d)", r.HostSelectionMaxAttempts)
			}
		}
		for _, m := range f.Mirrors {
			fmt.Fprintf(&b, " mirror=%s@%dppm", m.Cluster, m.PartsPerMillion)
		}
	case route.ActionRedirect:
		fmt.Fprintf(&b, " %d %s", d.Status, d.Location)
	case route.ActionDirectResponse:
		fmt.Fprintf(&b, " %d %q", d.Status, d.Route.Direct.Body)
	}
	if c := d.Route.CORS; c != nil {
		var origins []string
		for _, o := range c.AllowOrigins {
			if o.Regex != nil {
				origins = append(origins, "~"+o.Regex.String())
			} else {
				origins = append(origins, o.Value)
			}
		}
		fmt.Fprintf(&b, " cors=origins:%s,methods:%s", strings.Join(origins, "|"), c.AllowMethods)
	}
	if len(d.RequestHeaders) > 0 && d.Action == route.ActionForward {
		h := req.Header.Clone()
		d.RequestHeaders.Apply(h)
		fmt.Fprintf(&b, " | request: %s", formatHeader(h))
	}
	if len(d.ResponseHeaders) > 0 {
		h := resp.Clone()
		d.ResponseHeaders.Apply(h)
		fmt.Fprintf(&b, " | response: %s", formatHeader(h))
	}
	return b.String()
}

func formatHeader(h http.Header) string {
	var keys []string
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, strings.ToLower(k)+"="+strings.Join(h[k], ","))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, " ")
}
