package l7

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// TestServiceEntrySplit: a ServiceEntry with an address and a
// workloadSelector, bound to the namespace's waypoint, is routed by a
// VirtualService on its host like a Service: 80/20 over its subsets,
// measured over 1 000 requests to the entry's address.
func TestServiceEntrySplit(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-serviceentry.yaml", "se-mesh", 3)
	c := client(pods["client"])
	url := "http://198.51.100.10/"

	// Without a route the waypoint balances over both selected pods,
	// each request carrying the waypoint's x-request-id.
	until(t, 30*time.Second, "both versions answering through the waypoint", func() error {
		got := map[string]int{}
		for range 50 {
			code, e, err := get(c, url, nil)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%d %v", code, err)
			}
			if len(e.Headers["X-Request-Id"]) != 1 {
				return fmt.Errorf("answered by %s without the waypoint's x-request-id: %v", e.Pod, e.Headers)
			}
			got[e.Version]++
		}
		if got["v1"] == 0 || got["v2"] == 0 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})

	mesh.Apply(t, "l7-serviceentry-80-20.yaml")
	// In force once v2 answers at most 35 of 100: three standard
	// deviations below the even split, three above 20%.
	until(t, 30*time.Second, "the split in force", func() error {
		got, err := count(c, url, 100, nil)
		if err != nil {
			return err
		}
		if got["v2"] > 35 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})
	const n = 1000
	got := versions(t, c, url, n, nil)
	t.Logf("%d requests: %v", n, got)
	checkSplit(t, got, n, map[string]float64{"v1": 0.8, "v2": 0.2})
}

// TestServiceEntryExternal: a ServiceEntry whose endpoint is a server
// outside the mesh (a pod of a namespace that is not ambient) is served by
// the waypoint, which reaches the server in plaintext on the endpoint's
// port: the server sees the waypoint's address, not the client's, and the
// waypoint's x-request-id.
func TestServiceEntryExternal(t *testing.T) {
	t.Parallel()
	mesh.Apply(t, "l7-serviceentry-external.yaml", "se-ext", "se-outside")
	outside := mesh.MustWaitPods(t, "se-outside", 1)
	mesh.MustWaitPods(t, "se-ext", 1)
	zmeshctl(t, "waypoint", "apply", "-n", "se-ext", "--enroll-namespace", "--wait")
	pods := mesh.MustWaitPods(t, "se-ext", 2)
	wp := waypointPod(t, pods)

	legacy := outside["legacy"]
	se := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: legacy
  namespace: se-ext
spec:
  hosts:
  - legacy.se-outside.example
  addresses:
  - 198.51.100.20
  ports:
  - number: 80
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: %s
    ports:
      http: 8080
`, legacy.IP)
	file := filepath.Join(t.TempDir(), "serviceentry.yaml")
	if err := os.WriteFile(file, []byte(se), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("ServiceEntry se-ext/legacy:\n%s", se)
	mesh.MustKubectl(t, "apply", "-f", file)

	c := client(pods["client"])
	until(t, 30*time.Second, "the external server answering through the waypoint", func() error {
		e, err := echoFrom(c, "http://198.51.100.20/get")
		if err != nil {
			return err
		}
		if e.Pod != "legacy" || len(e.Headers["X-Request-Id"]) != 1 {
			return fmt.Errorf("answered by %q with headers %v", e.Pod, e.Headers)
		}
		from, err := netip.ParseAddrPort(e.From)
		if err != nil {
			return fmt.Errorf("from %q: %v", e.From, err)
		}
		// The waypoint dialled the server itself: the connection comes
		// from its pod, without a tunnel (the server has no ztunnel).
		if from.Addr() != wp.IP {
			return fmt.Errorf("the server saw a connection from %s, want the waypoint's %s", from.Addr(), wp.IP)
		}
		return nil
	})
}

// TestWorkloadWaypoint: with a waypoint for workloads bound to the
// namespace, a client dialling the server pod's own address goes through
// the waypoint (the server sees its x-request-id), and a pod outside the
// mesh that reached the server directly before the binding is refused
// after it: the server admits only its waypoint.
func TestWorkloadWaypoint(t *testing.T) {
	t.Parallel()
	mesh.Apply(t, "l7-workload-waypoint.yaml", "wl", "wl-outside")
	pods := mesh.MustWaitPods(t, "wl", 2)
	outsider := mesh.MustWaitPods(t, "wl-outside", 1)["outsider"]
	url := "http://" + pods["server"].Addr(8080).String() + "/get"
	c := client(pods["client"])

	// Before the binding: direct, and the outsider gets through.
	until(t, 30*time.Second, "the server answering the client directly", func() error {
		e, err := echoFrom(c, url)
		if err != nil {
			return err
		}
		if len(e.Headers["X-Request-Id"]) != 0 {
			return fmt.Errorf("a request id before any waypoint: %v", e.Headers)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	code, body, err := outsider.HTTPGet(ctx, url)
	cancel()
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s from outside the mesh before the binding = %d %q %v, want 200", url, code, body, err)
	}

	zmeshctl(t, "waypoint", "apply", "-n", "wl", "--for", "workload", "--enroll-namespace", "--wait")
	mesh.MustWaitPods(t, "wl", 3)

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
	until(t, 30*time.Second, "the outsider refused", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		code, body, err := outsider.HTTPGet(ctx, url)
		if err == nil {
			return fmt.Errorf("GET %s from outside the mesh = %d %q, want the connection refused", url, code, body)
		}
		t.Logf("GET %s from outside the mesh: %v (refused, as it should)", url, err)
		return nil
	})
}

// echoFrom does one GET through c and decodes a 200 answer's echo, with
// the address the app saw the request from.
func echoFrom(c *http.Client, url string) (podapp.Echo, error) {
	resp, err := c.Get(url)
	if err != nil {
		return podapp.Echo{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return podapp.Echo{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return podapp.Echo{}, fmt.Errorf("%d %q", resp.StatusCode, b)
	}
	var e podapp.Echo
	if err := json.Unmarshal(b, &e); err != nil {
		return podapp.Echo{}, fmt.Errorf("reply %q: %w", b, err)
	}
	return e, nil
}
