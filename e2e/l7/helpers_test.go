package l7

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// zmeshctl runs the CLI built for the cluster as its admin, logging the
// command and its output; it fails the test on error.
func zmeshctl(t *testing.T, args ...string) string { return mesh.Zmeshctl(t, args...) }

// serviceAddr is a Service's ClusterIP and port.
func serviceAddr(t *testing.T, ns, name string, port uint16) netip.AddrPort {
	return mesh.ServiceAddr(t, ns, name, port)
}

// client is an HTTP client whose connections start in the pod's network
// namespace (so ztunnel captures them) and are kept alive between
// requests, as an application's would be.
func client(p *cluster.Pod) *http.Client { return p.HTTPClient() }

// get sends one GET with the given headers and decodes the app's echo.
func get(c *http.Client, url string, header http.Header) (int, podapp.Echo, error) {
	return cluster.GetEcho(c, url, header)
}

// versions sends n requests and counts the answering versions; any error
// or non-200 answer fails the test.
func versions(t *testing.T, c *http.Client, url string, n int, header http.Header) map[string]int {
	t.Helper()
	got, err := count(c, url, n, header)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// count sends n requests and counts the answering versions, stopping at
// the first error or non-200 answer.
func count(c *http.Client, url string, n int, header http.Header) (map[string]int, error) {
	return cluster.CountVersions(c, url, n, header)
}

// onlyVersion waits until every one of 20 requests in a row is answered
// by version want (configuration reaches the waypoint asynchronously).
func onlyVersion(t *testing.T, c *http.Client, url, want string, header http.Header) {
	t.Helper()
	until(t, 30*time.Second, "every request answered by "+want, func() error {
		got, err := count(c, url, 20, header)
		if err != nil {
			return err
		}
		if got[want] != 20 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})
}

// until polls check every 50 ms for up to d and fails the test with the
// last error when it never returns nil.
func until(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: %v", d, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// untilCode waits (30s) until a GET of url with header through c is
// answered with want.
func untilCode(t *testing.T, what string, c *http.Client, url string, header http.Header, want int) {
	t.Helper()
	until(t, 30*time.Second, what, func() error {
		code, body, _, err := send(c, http.MethodGet, url, header)
		if err != nil {
			return err
		}
		if code != want {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
}
