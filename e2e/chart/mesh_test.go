package chart

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// echoPort is the TCP echo port of the scenarios' servers (e2e/podapp).
const echoPort = 9000

// TestHBONEAndPolicy: with the chart's ztunnels and agents, pods of an
// ambient namespace are captured, talk across nodes over HBONE with their
// SPIFFE identities (the destination ztunnel's metrics say so), and an
// AuthorizationPolicy from the chart's zmeshd refuses the client.
func TestHBONEAndPolicy(t *testing.T) {
	mesh.Apply(t, "mtls.yaml", "mtls", "mtls-legacy")
	pods := mesh.MustWaitPods(t, "mtls", 2)
	client, server := pods["client"], pods["server"]
	cluster.Eventually(t, 30*time.Second, "client and server captured (ambient.istio.io/redirection)", func() bool {
		a, _ := mesh.Redirected(t.Context(), "mtls", "client")
		b, _ := mesh.Redirected(t.Context(), "mtls", "server")
		return a && b
	})
	dst := server.Addr(echoPort)
	until(t, 30*time.Second, "client -> server across nodes", func() error {
		_, _, err := client.Echo(t.Context(), dst)
		return err
	})
	want := map[string]string{
		"reporter": "destination", "source_workload": "client", "destination_workload": "server",
		"source_principal":           "spiffe://cluster.local/ns/mtls/sa/default",
		"connection_security_policy": "mutual_tls",
	}
	var line string
	until(t, 15*time.Second, "the server's ztunnel counts an mTLS connection from the client", func() error {
		// A new connection each time: the labels are the workloads the
		// server's ztunnel knew when it accepted the connection, and the
		// first one may come before its workload view has the client.
		if _, _, err := client.Echo(t.Context(), dst); err != nil {
			return err
		}
		m, err := server.Node.Metrics(t.Context())
		if err != nil {
			return err
		}
		if line = cluster.MetricLine(m, "istio_tcp_connections_opened_total", want); line == "" || cluster.MetricValue(line) < 1 {
			return fmt.Errorf("no istio_tcp_connections_opened_total with %v; the server's ztunnel has %q", want,
				cluster.MetricLine(m, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"}))
		}
		return nil
	})
	t.Logf("%s ztunnel (chart's pod at %s): %s", server.Node.Name, server.Node.ZtunnelMetrics, line)

	deny := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mtls}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/mtls/sa/default]}
`
	if out, err := mesh.Env.KubectlRun(t.Context(), deny, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply the DENY policy: %v: %s", err, out)
	}
	until(t, 30*time.Second, "the DENY refuses client -> server", func() error {
		if _, _, err := client.Echo(t.Context(), dst); err == nil {
			return fmt.Errorf("still answered")
		}
		return nil
	})
	for range 5 {
		if _, _, err := client.Echo(t.Context(), dst); err == nil {
			t.Fatal("client -> server answered after the DENY took effect")
		}
	}
	t.Log("DENY of the client's principal: 5 of 5 connections refused")
}

// TestWaypointSplit: zmeshd (the chart's Deployment) deploys a waypoint
// for a namespace as the node runners' pod, whose xDS address is the
// chart's Service name (cluster DNS, the kube-proxy stand-in), and the
// waypoint splits traffic 80/20 as a VirtualService says.
func TestWaypointSplit(t *testing.T) {
	mesh.Apply(t, "l7-canary.yaml", "canary")
	pods := mesh.MustWaitPods(t, "canary", 4)
	zmeshctl(t, "waypoint", "apply", "-n", "canary", "--enroll-namespace", "--wait")
	mesh.MustWaitPods(t, "canary", 5)
	mesh.Apply(t, "l7-canary-80-20.yaml")
	c := httpClient(pods["client"])
	url := "http://" + serviceAddr(t, "canary", "reviews", 9080).String() + "/"
	until(t, 30*time.Second, "requests carry the waypoint's x-request-id", func() error {
		code, e, err := get(c, url)
		if err != nil {
			return err
		}
		if code != http.StatusOK || len(e.Headers["X-Request-Id"]) != 1 {
			return fmt.Errorf("%d, headers %v", code, e.Headers)
		}
		return nil
	})
	// Configuration reaches the waypoint asynchronously: wait for v3 to
	// stop answering, then measure.
	until(t, 30*time.Second, "only v1 and v2 answer", func() error {
		got, err := count(c, url, 40)
		if err != nil {
			return err
		}
		if got["v3"] > 0 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})
	const n = 500
	got, err := count(c, url, n)
	if err != nil {
		t.Fatal(err)
	}
	v1 := float64(got["v1"]) / n
	t.Logf("%d requests through the chart-installed waypoint: %v (v1 %.2f, want 0.80)", n, got, v1)
	// 500 draws at p=0.8: the standard deviation is 0.018; 0.08 is over 4.
	if got["v1"]+got["v2"] != n || math.Abs(v1-0.8) > 0.08 {
		t.Errorf("split %v, want about 80%% v1 and 20%% v2 and nothing else", got)
	}
	if !strings.Contains(mustKubectl(t, "get", "pods", "-n", "canary", "-l", "gateway.networking.k8s.io/gateway-name", "-o", "wide"), "Running") {
		t.Error("the waypoint pod is not listed Running")
	}
}
