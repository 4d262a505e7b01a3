package l7

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/internal/testutil"
)

// TestAuthorization follows Istio's authorization tasks (HTTP traffic, JWT
// tokens) at a waypoint, each policy written as the docs write it for
// ambient, with targetRefs to the namespace's waypoint Gateway:
// allow-nothing, then ALLOW GET on /api/* from sleep's principal only, a
// DENY on a header value, and a RequestAuthentication (a key generated
// here, inline) with an ALLOW on a claim. Refusals are Envoy's: 403 `RBAC:
// access denied`, 401 `Jwt verification fails`.
func TestAuthorization(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-authz.yaml", "l7authz", 3)
	sleep, notsleep := client(pods["sleep"]), client(pods["notsleep"])
	base := "http://" + serviceAddr(t, "l7authz", "httpbin", 8000).String()
	untilCode(t, "httpbin through the waypoint", sleep, base+"/api/ready", nil, http.StatusOK)

	apply := func(y string) {
		t.Helper()
		t.Logf("$ kubectl apply -f -\n%s", strings.TrimSpace(y))
		mesh.Env.MustKubectl(t, y, "apply", "-f", "-")
	}
	expect := func(c *http.Client, method, path string, header http.Header, code int, body string) {
		t.Helper()
		got, b, _, err := send(c, method, base+path, header)
		if err != nil || got != code || (body != "" && b != body) {
			t.Errorf("%s %s %v: %d %q %v, want %d %q", method, path, header, got, trim(b), err, code, body)
		}
	}

	t.Run("allow-nothing", func(t *testing.T) {
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
`)
		untilCode(t, "allow-nothing in force", sleep, base+"/api/ready", nil, http.StatusForbidden)
		expect(sleep, http.MethodGet, "/api/ready", nil, http.StatusForbidden, "RBAC: access denied")
		expect(notsleep, http.MethodGet, "/", nil, http.StatusForbidden, "RBAC: access denied")
	})

	t.Run("allow GET /api/* from sleep", func(t *testing.T) {
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: get-api
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/l7authz/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/*"]
`)
		untilCode(t, "get-api in force", sleep, base+"/api/items", nil, http.StatusOK)
		expect(sleep, http.MethodGet, "/api/items", nil, http.StatusOK, "")
		expect(sleep, http.MethodPost, "/api/items", nil, http.StatusForbidden, "RBAC: access denied")
		expect(sleep, http.MethodGet, "/admin", nil, http.StatusForbidden, "RBAC: access denied")
		expect(notsleep, http.MethodGet, "/api/items", nil, http.StatusForbidden, "RBAC: access denied")
	})

	t.Run("deny a header value", func(t *testing.T) {
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-test-header
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: DENY
  rules:
  - when:
    - key: request.headers[x-test]
      values: ["deny"]
`)
		denied := http.Header{"X-Test": {"deny"}}
		untilCode(t, "deny-test-header in force", sleep, base+"/api/items", denied, http.StatusForbidden)
		expect(sleep, http.MethodGet, "/api/items", denied, http.StatusForbidden, "RBAC: access denied")
		expect(sleep, http.MethodGet, "/api/items", http.Header{"X-Test": {"allow"}}, http.StatusOK, "")
		expect(sleep, http.MethodGet, "/api/items", nil, http.StatusOK, "")
	})

	t.Run("JWT claim", func(t *testing.T) {
		mesh.Env.MustKubectl(t, "", "delete", "authorizationpolicy", "-n", "l7authz", "allow-nothing", "get-api", "deny-test-header")
		const iss = "testing@secure.istio.io"
		key, other := testutil.NewJWTIssuer(t, iss, "e2e"), testutil.NewJWTIssuer(t, iss, "e2e")
		jwks := key.JWKS(t)
		token := func(k *testutil.JWTIssuer, claims map[string]any) http.Header {
			return http.Header{"Authorization": {"Bearer " + k.Token(t, claims)}}
		}
		apply(fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  jwtRules:
  - issuer: %q
    jwks: %q
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["%s/*"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
`, iss, jwks, iss))
		member := token(key, map[string]any{"sub": "alice", "groups": []string{"group1", "group2"}})
		// Without any policy every request passed: wait for both objects.
		untilCode(t, "require-jwt in force", sleep, base+"/headers", nil, http.StatusForbidden)
		untilCode(t, "jwt-example in force", sleep, base+"/headers", member, http.StatusOK)

		expect(sleep, http.MethodGet, "/headers", nil, http.StatusForbidden, "RBAC: access denied")
		expect(sleep, http.MethodGet, "/headers", token(key, map[string]any{"sub": "bob", "groups": []string{"group2"}}), http.StatusForbidden, "RBAC: access denied")
		expect(sleep, http.MethodGet, "/headers", token(other, map[string]any{"sub": "alice", "groups": []string{"group1"}}), http.StatusUnauthorized, "Jwt verification fails")
		expect(sleep, http.MethodGet, "/headers", http.Header{"Authorization": {"Bearer deadbeef"}}, http.StatusUnauthorized, "")
		code, e, err := get(sleep, base+"/headers", member)
		if err != nil || code != http.StatusOK {
			t.Fatalf("with the claim: %d %v", code, err)
		}
		// forwardOriginalToken is false: the app does not see the token.
		for k := range e.Headers {
			if strings.EqualFold(k, "Authorization") {
				t.Errorf("the app saw the token: %v", e.Headers)
			}
		}
		// CUSTOM cannot call its provider at the waypoint: the requests its
		// rules match are denied, and its status says so.
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: l7authz
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: CUSTOM
  provider:
    name: sample-ext-authz-http
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
`)
		untilCode(t, "ext-authz in force", sleep, base+"/admin/users", member, http.StatusForbidden)
		expect(sleep, http.MethodGet, "/admin/users", member, http.StatusForbidden, "RBAC: access denied")
		expect(sleep, http.MethodGet, "/headers", member, http.StatusOK, "")
		until(t, 30*time.Second, "CUSTOM policy status", func() error {
			out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", "l7authz", "ext-authz", "-o",
				`jsonpath={.status.conditions[?(@.type=="WaypointAccepted")].status} {.status.conditions[?(@.type=="WaypointAccepted")].message}`)
			if err != nil || !strings.HasPrefix(out, "False ") || !strings.Contains(out, "CUSTOM") {
				return fmt.Errorf("WaypointAccepted %q %v", out, err)
			}
			return nil
		})
		// The policies' status says the waypoint enforces them.
		until(t, 30*time.Second, "RequestAuthentication status", func() error {
			out, err := mesh.Kubectl(t.Context(), "get", "requestauthentication", "-n", "l7authz", "jwt-example", "-o",
				`jsonpath={.status.conditions[?(@.type=="WaypointAccepted")].status}`)
			if err != nil || strings.TrimSpace(out) != "True" {
				return fmt.Errorf("WaypointAccepted %q %v", out, err)
			}
			return nil
		})
	})
}
