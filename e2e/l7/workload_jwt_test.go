package l7

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/internal/testutil"
)

// TestWorkloadAddressedJWT: with a waypoint for workloads, a
// RequestAuthentication and an ALLOW on requestPrincipals attached to the
// waypoint's Gateway apply to a client that dials the server pod's own
// address, as they do through a Service (TestAuthorization): a token that
// does not verify is refused with 401 `Jwt verification fails`, a request
// without a token with 403 `RBAC: access denied`, and a valid token is let
// through, its claim header written by the waypoint and not by the client.
// The RequestAuthentication alone already refuses a bad token there.
func TestWorkloadAddressedJWT(t *testing.T) {
	t.Parallel()
	mesh.Apply(t, "l7-workload-jwt.yaml", "wljwt")
	pods := mesh.MustWaitPods(t, "wljwt", 2)
	zmeshctl(t, "waypoint", "apply", "-n", "wljwt", "--for", "workload", "--enroll-namespace", "--wait")
	mesh.MustWaitPods(t, "wljwt", 3)
	c := client(pods["client"])
	url := "http://" + pods["server"].Addr(8080).String() + "/headers"
	until(t, 30*time.Second, "the client's request to the pod address through the waypoint", func() error {
		e, err := echoFrom(c, url)
		if err != nil {
			return err
		}
		if len(e.Headers["X-Request-Id"]) != 1 {
			return fmt.Errorf("no waypoint x-request-id: %v", e.Headers)
		}
		return nil
	})

	const iss = "testing@secure.istio.io"
	key, other := testutil.NewJWTIssuer(t, iss, "e2e"), testutil.NewJWTIssuer(t, iss, "e2e")
	keys := key.JWKS(t)
	token := func(k *testutil.JWTIssuer, sub string) http.Header {
		return http.Header{"Authorization": {"Bearer " + k.Token(t, map[string]any{"sub": sub})}, "X-Jwt-Sub": {"mallory"}}
	}
	ra := fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: wljwt
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  jwtRules:
  - issuer: %q
    jwks: %q
    outputClaimToHeaders:
    - header: x-jwt-sub
      claim: sub
`, iss, keys)
	apply := func(y string) {
		t.Helper()
		t.Logf("$ kubectl apply -f -\n%s", strings.TrimSpace(y))
		mesh.Env.MustKubectl(t, y, "apply", "-f", "-")
	}
	expect := func(what string, header http.Header, code int, body string) {
		t.Helper()
		got, b, _, err := send(c, http.MethodGet, url, header)
		if err != nil || got != code || (body != "" && b != body) {
			t.Errorf("%s: %d %q %v, want %d %q", what, got, trim(b), err, code, body)
		}
	}
	// The app sees the token's subject in x-jwt-sub, written by the
	// waypoint over what the client sent, and never the token.
	validToken := func(header http.Header) {
		t.Helper()
		code, e, err := get(c, url, header)
		if err != nil || code != http.StatusOK {
			t.Fatalf("a valid token: %d %v", code, err)
		}
		for k, v := range e.Headers {
			switch {
			case strings.EqualFold(k, "Authorization"):
				t.Errorf("the app saw the token: %v", v)
			case strings.EqualFold(k, "X-Jwt-Sub") && (len(v) != 1 || v[0] != "alice"):
				t.Errorf("the app saw x-jwt-sub %q, want the token's subject alone", v)
			}
		}
	}
	alice, forged := token(key, "alice"), token(other, "alice")

	// The RequestAuthentication alone: a token that does not verify never
	// reaches the app; a request without one passes.
	apply(ra)
	untilCode(t, "jwt in force on the pod's address", c, url, forged, http.StatusUnauthorized)
	expect("a token signed by another key", forged, http.StatusUnauthorized, "Jwt verification fails")
	expect("not a token", http.Header{"Authorization": {"Bearer deadbeef"}}, http.StatusUnauthorized, "")
	expect("no token", nil, http.StatusOK, "")
	validToken(alice)

	// With an ALLOW on requestPrincipals: a verified token is required.
	apply(fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: wljwt
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
`, iss))
	untilCode(t, "require-jwt in force", c, url, nil, http.StatusForbidden)
	expect("no token", nil, http.StatusForbidden, "RBAC: access denied")
	expect("a token signed by another key", forged, http.StatusUnauthorized, "Jwt verification fails")
	expect("not a token", http.Header{"Authorization": {"Bearer deadbeef"}}, http.StatusUnauthorized, "")
	validToken(alice)
}
