package rbac_test

import (
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/internal/golden"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
)

var update = flag.Bool("update", false, "rewrite the expected decisions in testdata/*.txtar")

// chain names the files an archive may hold, in filter-chain order: each an
// envoy.extensions.filters.http.rbac.v3.RBAC in protojson form written as
// YAML. Istio's waypoint chain has its DENY filter before its ALLOW filter.
var chain = []string{"rbac1.yaml", "rbac2.yaml", "rbac3.yaml"}

// TestGolden runs every testdata/*.txtar archive. "cases" holds one request
// a line: "METHOD PATH [TOKEN...] -> DECISION", tokens being principal=URI
// (the peer's SPIFFE ID), ip=ADDR (direct remote), remote=ADDR (original
// client; defaults to ip), dst=ADDR:PORT, jwt=ISS/SUB, claim:NAME[.NAME]=V[,V]
// and NAME=VALUE (a request header). DECISION is the chain's outcome: the
// first filter that denies, or "allow", each filter that had a deciding
// policy, a LOG match or shadow result listed.
func TestGolden(t *testing.T) {
	golden.RunCases(t, *update, func(t *testing.T, ar golden.Archive) func(string) (string, error) {
		var sets []*rbac.Set
		var names []string
		for _, name := range chain {
			y, ok := ar.File(name)
			if !ok {
				continue
			}
			sets = append(sets, compileYAML(t, name, y))
			names = append(names, strings.TrimSuffix(name, ".yaml"))
		}
		if len(sets) == 0 {
			t.Fatal("archive has no rbac1.yaml")
		}
		return func(line string) (string, error) {
			req, err := parseRequest(line)
			if err != nil {
				return "", err
			}
			var parts []string
			for i, s := range sets {
				d := rbac.Evaluate(s, req)
				parts = append(parts, describe(names[i], d)...)
				if !d.Allowed {
					return fmt.Sprintf("%d %s %s", rbac.DeniedStatus, rbac.DeniedBody, strings.Join(parts, " ")), nil
				}
			}
			return strings.TrimSpace("allow " + strings.Join(parts, " ")), nil
		}
	})
}

func describe(filter string, d rbac.Decision) []string {
	var out []string
	if d.Policy != "" {
		out = append(out, fmt.Sprintf("%s:%s", filter, d.Policy))
	} else if !d.Allowed {
		out = append(out, filter+":no-match")
	}
	if d.Log {
		out = append(out, filter+":log")
	}
	if d.Shadow != "" {
		out = append(out, fmt.Sprintf("%s:shadow-%s(%s)", filter, d.Shadow, d.ShadowPolicy))
	}
	return out
}

func compileYAML(t testing.TB, name string, y []byte) *rbac.Set {
	t.Helper()
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	cfg := &rbacfilterv3.RBAC{}
	if err := protojson.Unmarshal(js, cfg); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	s, err := config.CompileRBAC(name, cfg)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return s
}

func parseRequest(line string) (*rbac.Request, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return nil, fmt.Errorf("want METHOD PATH [TOKEN...], got %q", line)
	}
	req := &rbac.Request{HTTP: route.Request{Method: f[0], Path: f[1], Authority: "svc", Header: http.Header{}}}
	remoteSet := false
	for _, tok := range f[2:] {
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			return nil, fmt.Errorf("token %q: want NAME=VALUE", tok)
		}
		var err error
		switch {
		case k == "principal":
			req.Principal = v
		case k == "ip":
			req.DirectRemoteIP, err = netip.ParseAddr(v)
		case k == "remote":
			req.RemoteIP, err = netip.ParseAddr(v)
			remoteSet = true
		case k == "dst":
			var ap netip.AddrPort
			ap, err = netip.ParseAddrPort(v)
			req.DestinationIP, req.DestinationPort = ap.Addr(), ap.Port()
		case k == "jwt":
			req.RequestPrincipal = v
		case strings.HasPrefix(k, "claim:"):
			req.Claims = append(req.Claims, rbac.Claim{Path: strings.Split(k[len("claim:"):], "."), Values: strings.Split(v, ",")})
		default:
			req.HTTP.Header.Add(k, v)
		}
		if err != nil {
			return nil, fmt.Errorf("token %q: %v", tok, err)
		}
	}
	if !remoteSet {
		req.RemoteIP = req.DirectRemoteIP
	}
	return req, nil
}
