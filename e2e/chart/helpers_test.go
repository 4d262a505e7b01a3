package chart

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
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

// echo is the part of the test app's JSON reply the scenarios read.
type echo struct {
	Version string              `json:"version"`
	Headers map[string][]string `json:"headers"`
}

func get(c *http.Client, url string) (int, echo, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, echo{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, echo{}, err
	}
	var e echo
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &e); err != nil {
			return resp.StatusCode, e, fmt.Errorf("reply %q: %w", b, err)
		}
	}
	return resp.StatusCode, e, nil
}

// count sends n requests and counts the answering versions, stopping at
// the first error or non-200 answer.
func count(c *http.Client, url string, n int) (map[string]int, error) {
	got := map[string]int{}
	for i := range n {
		code, e, err := get(c, url)
		if err != nil || code != http.StatusOK {
			return got, fmt.Errorf("request %d of %d to %s: %d %v", i+1, n, url, code, err)
		}
		got[e.Version]++
	}
	return got, nil
}
