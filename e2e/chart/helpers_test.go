package chart

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("address %q: %v", s, err)
	}
	return a
}

func mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	return mesh.MustKubectl(t, args...)
}

// until polls check every 100 ms for up to d and fails the test with the
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
		time.Sleep(100 * time.Millisecond)
	}
}

// zmeshctl runs the CLI built for the cluster as its admin.
func zmeshctl(t *testing.T, args ...string) string { return mesh.Zmeshctl(t, args...) }

// serviceAddr is a Service's ClusterIP and port.
func serviceAddr(t *testing.T, ns, name string, port uint16) netip.AddrPort {
	return mesh.ServiceAddr(t, ns, name, port)
}

// httpClient's connections start in the pod's network namespace, so
// ztunnel captures them.
func httpClient(p *cluster.Pod) *http.Client { return p.HTTPClient() }

// get sends one GET and decodes the app's echo.
func get(c *http.Client, url string) (int, podapp.Echo, error) { return cluster.GetEcho(c, url, nil) }

// count sends n requests and counts the answering versions, stopping at
// the first error or non-200 answer.
func count(c *http.Client, url string, n int) (map[string]int, error) {
	return cluster.CountVersions(c, url, n, nil)
}
