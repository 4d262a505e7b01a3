//go:build !race

// The race detector's sync.Pool drops items at random, so allocation
// counts only mean something without it.

package proxy

import "testing"

// A request through the waypoint allocates less than the same plain-HTTP
// hop through net/http/httputil.ReverseProxy, measured in the same process
// with the same client and app, although the waypoint's figure also
// carries both HBONE ends of the tunnels (the harness plays the client's
// ztunnel and the pod's), and the waypoint's figure includes its telemetry
// (Istio's metrics and the access-log line of each request, as it runs
// in a mesh). The waypoint forwards with a request and
// response path of its own (exchangeUpstream): the reverse proxy's
// request clone, header copies and per-response flush timer, and an
// upstream attempt of a dozen allocations, fail it, as do metrics that
// format their labels anew and an access log that encodes its lines by
// reflection (18 allocations between them).
func TestHopAllocations(t *testing.T) {
	m := newMesh(t, bounds{})
	allocs := map[string]float64{}
	for _, h := range hops(t, m) {
		get := func() { h.get(t) }
		for range 20 { // warm connections, pools and stacks
			get()
		}
		allocs[h.name] = testing.AllocsPerRun(300, get)
	}
	t.Logf("allocations per request: direct %.1f, reverseproxy %.1f, waypoint %.1f", allocs["direct"], allocs["reverseproxy"], allocs["waypoint"])
	if allocs["waypoint"] >= allocs["reverseproxy"] {
		t.Errorf("waypoint hop: %.1f allocations per request, want fewer than httputil.ReverseProxy's %.1f", allocs["waypoint"], allocs["reverseproxy"])
	}
}
