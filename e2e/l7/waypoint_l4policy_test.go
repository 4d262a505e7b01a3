package l7

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestWaypointL4Policy: AuthorizationPolicies on the waypoint as a
// workload, which Istio's waypoints ignore (ztunnel does not capture the
// waypoint's pods), are enforced by zmesh's waypoint on each tunnel. An
// ALLOW selecting the waypoint's pods by
// gateway.networking.k8s.io/gateway-name and naming client-a only (and its
// trust domain, which ztunnel could not check but the waypoint does): client-a's
// requests through the waypoint succeed, client-b's connections are
// refused (the waypoint refuses the tunnel; the client sees its connection
// closed, not an HTTP answer), and the policy's WaypointAccepted says the
// waypoint enforces it, its ZtunnelAccepted that ztunnel does not. Then a namespace-wide DENY with notPrincipals:
// every identity but client-a's and the waypoint's own is refused (the
// policy applies at httpbin's ztunnel too, where the waypoint is the peer).
func TestWaypointL4Policy(t *testing.T) {
	t.Parallel()
	const ns = "l7l4pol"
	pods := withWaypoint(t, "l7-l4policy.yaml", ns, 3)
	a, b := freshClient(pods["client-a"]), freshClient(pods["client-b"])
	url := "http://" + serviceAddr(t, ns, "httpbin", 8000).String() + "/headers"
	untilCode(t, "client-a through the waypoint", a, url, nil, http.StatusOK)
	untilCode(t, "client-b through the waypoint", b, url, nil, http.StatusOK)

	apply := func(y string) {
		t.Helper()
		t.Logf("$ kubectl apply -f -\n%s", strings.TrimSpace(y))
		mesh.Env.MustKubectl(t, y, "apply", "-f", "-")
	}
	// refused waits until c's requests fail without an HTTP answer, then
	// checks a few more in a row.
	refused := func(c *http.Client, who string) {
		t.Helper()
		until(t, 30*time.Second, who+" refused", func() error {
			code, body, _, err := send(c, http.MethodGet, url, nil)
			if err == nil {
				return fmt.Errorf("answered %d %q", code, trim(body))
			}
			t.Logf("%s: %v", who, err)
			return nil
		})
		for range 5 {
			if code, body, _, err := send(c, http.MethodGet, url, nil); err == nil {
				t.Errorf("%s: answered %d %q, want the connection refused", who, code, trim(body))
			}
		}
	}
	served := func(c *http.Client, who string) {
		t.Helper()
		for range 5 {
			if code, body, _, err := send(c, http.MethodGet, url, nil); err != nil || code != http.StatusOK {
				t.Errorf("%s: %d %q %v, want 200", who, code, trim(body), err)
			}
		}
	}

	t.Run("ALLOW selecting the waypoint", func(t *testing.T) {
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: waypoint-allow-a
  namespace: l7l4pol
spec:
  selector:
    matchLabels:
      gateway.networking.k8s.io/gateway-name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/l7l4pol/sa/client-a"]
        trustDomains: ["cluster.local"]
`)
		refused(b, "client-b")
		served(a, "client-a")
		until(t, 30*time.Second, "WaypointAccepted", func() error {
			out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", ns, "waypoint-allow-a", "-o",
				`jsonpath={.status.conditions[?(@.type=="WaypointAccepted")].status} {.status.conditions[?(@.type=="WaypointAccepted")].message}`)
			if err != nil || !strings.HasPrefix(out, "True ") || !strings.Contains(out, "waypoint "+ns+"/waypoint") {
				return fmt.Errorf("WaypointAccepted %q %v", out, err)
			}
			return nil
		})
		// ztunnel captures no pod the policy selects: its condition says
		// the waypoint enforces it, not that trustDomains is unsupported.
		until(t, 30*time.Second, "ZtunnelAccepted", func() error {
			out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", ns, "waypoint-allow-a", "-o",
				`jsonpath={.status.conditions[?(@.type=="ZtunnelAccepted")].status} {.status.conditions[?(@.type=="ZtunnelAccepted")].message}`)
			if err != nil || !strings.HasPrefix(out, "True not enforced by ztunnel") || !strings.Contains(out, "waypoint "+ns+"/waypoint") ||
				strings.Contains(out, "trustDomains") {
				return fmt.Errorf("ZtunnelAccepted %q %v", out, err)
			}
			return nil
		})
	})

	t.Run("namespace-wide DENY with notPrincipals", func(t *testing.T) {
		mesh.Env.MustKubectl(t, "", "delete", "authorizationpolicy", "-n", ns, "waypoint-allow-a")
		untilCode(t, "client-b allowed again", b, url, nil, http.StatusOK)
		apply(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-others
  namespace: l7l4pol
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals:
        - cluster.local/ns/l7l4pol/sa/client-a
        - cluster.local/ns/l7l4pol/sa/waypoint
`)
		refused(b, "client-b")
		served(a, "client-a")
	})
}

// freshClient is client with a new connection for every request: the
// waypoint decides a tunnel's L4 policy when the tunnel opens.
func freshClient(p *cluster.Pod) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.NS.Dial(ctx, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}
