package e2e

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/jwt"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
)

// jwtOutcome runs a request through a compiled chain's filters as the
// waypoint's proxy does: the tunnel's RBAC filters, then the HTTP filters
// in order, a JWT filter's verified principal and claims feeding the RBAC
// filters after it. It returns the local reply ("401 Jwt verification
// fails", "403 RBAC: access denied") or "allow <deciding policy>", and
// the headers the JWT filters removed from the request.
func jwtOutcome(c *config.Chain, method, path string, header http.Header, peer netip.Addr, principal string, dst netip.AddrPort) (string, []string) {
	req := rbac.Request{
		HTTP:      route.Request{Method: method, Path: path, Authority: "app", Header: header},
		Principal: principal, DirectRemoteIP: peer, RemoteIP: peer,
		DestinationIP: dst.Addr(), DestinationPort: dst.Port(),
	}
	var removed []string
	decided := "-"
	for _, f := range append(slices.Clone(c.ConnFilters), c.HTTPFilters...) {
		switch {
		case f.JWT != nil:
			res := jwt.Decide(f.JWT, &jwt.Request{Method: method, Path: path, Header: header, URL: "http://app" + path}, time.Now())
			if res.Status != jwt.OK {
				return fmt.Sprintf("%d %s", res.Status.Code(), res.Status), removed
			}
			removed = append(removed, res.RemoveHeaders...)
			req.RequestPrincipal, req.Claims = res.Principal, nil
			for _, cl := range res.Claims {
				req.Claims = append(req.Claims, rbac.Claim{Path: cl.Path, Values: cl.Values})
			}
		case f.RBAC != nil:
			d := rbac.Evaluate(f.RBAC, &req)
			if d.Policy != "" {
				decided = d.Policy
			}
			if !d.Allowed {
				return fmt.Sprintf("%d %s", rbac.DeniedStatus, rbac.DeniedBody), removed
			}
		}
	}
	return "allow " + decided, removed
}

// TestL7WorkloadAddressedJWT: a waypoint for all traffic serves a pod both
// through its Service's VIP and at its own address. A RequestAuthentication
// and an ALLOW on requestPrincipals attached to the waypoint's Gateway apply
// to both, so a client that dials the pod's IP instead of the VIP gets no
// weaker checks: an invalid token is refused with 401, a request without a
// token with 403, a valid token is allowed by the policy, and a claim header
// the client wrote itself is dropped. Built by zmeshd's translation and
// compiled by the waypoint's own compiler.
func TestL7WorkloadAddressedJWT(t *testing.T) {
	const iss = "https://issuer.example.com"
	key, other := testutil.NewJWTIssuer(t, iss, "k1"), testutil.NewJWTIssuer(t, iss, "k1")
	keys := key.JWKS(t)
	sign := func(k *testutil.JWTIssuer, sub string) http.Header {
		return http.Header{"Authorization": {"Bearer " + k.Token(t, map[string]any{"sub": sub})}, "X-Jwt-Sub": {"mallory"}}
	}
	snap := modeltest.Decode(t, []byte(fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: v1
kind: Pod
metadata: {name: app-0, namespace: shop, labels: {app: app}}
spec:
  serviceAccountName: app
  containers:
  - {name: app, image: app, ports: [{name: http, containerPort: 8080}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec:
  clusterIP: 10.96.1.10
  selector: {app: app}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  jwtRules:
  - issuer: %q
    jwks: %q
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  action: ALLOW
  rules:
  - from:
    - source: {requestPrincipals: ["%s/*"]}
`, iss, keys, iss)))
	chains := compiledChains(t, snap)
	peer := netip.MustParseAddr("10.244.2.9")
	client := "spiffe://cluster.local/ns/shop/sa/client"
	cases := []struct {
		name   string
		header http.Header
		want   string
	}{
		{"no token", http.Header{}, "403 RBAC: access denied"},
		{"a token signed by another key", sign(other, "alice"), "401 Jwt verification fails"},
		{"not a token", http.Header{"Authorization": {"Bearer deadbeef"}}, "401 Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"},
		{"a valid token", sign(key, "alice"), "allow ns[shop]-policy[require-jwt]-rule[0]"},
	}
	for _, dst := range []string{"10.96.1.10:80", "10.244.1.5:8080"} {
		ap := netip.MustParseAddrPort(dst)
		ch := chains[ap]
		if ch == nil {
			t.Fatalf("no chain for %s", dst)
		}
		for _, c := range cases {
			got, removed := jwtOutcome(ch, http.MethodGet, "/orders", c.header, peer, client, ap)
			if got != c.want {
				t.Errorf("%s (chain %s), %s: got %q, want %q", dst, ch.Name, c.name, got, c.want)
			}
			if strings.HasPrefix(got, "allow") && !slices.Contains(removed, "X-Jwt-Sub") {
				t.Errorf("%s (chain %s), %s: the client's own x-jwt-sub is kept (removed %v)", dst, ch.Name, c.name, removed)
			}
		}
	}
}
