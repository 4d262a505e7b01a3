package route_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/zmesh/zmesh/waypoint/route"
)

// table100 is a virtual host with 100 routes, each a path prefix with a
// header match, among Istio-style domains; the request matches the last.
func table100(tb testing.TB) (*route.Table, route.Request) {
	var b strings.Builder
	b.WriteString("name: \"8080\"\nvirtual_hosts:\n- name: svc\n  domains: [svc, \"svc:8080\", svc.ns.svc.cluster.local, \"svc.ns.svc.cluster.local:8080\"]\n  routes:\n")
	for i := range 100 {
		fmt.Fprintf(&b, "  - name: r%d\n    match:\n      prefix: /api/v%d/\n      headers:\n      - name: x-tenant\n        string_match: {exact: tenant-%d}\n", i, i, i)
		fmt.Fprintf(&b, "    route:\n      weighted_clusters:\n        clusters:\n        - {name: c%d-a, weight: 90}\n        - {name: c%d-b, weight: 10}\n", i, i)
	}
	table := compileYAML(tb, []byte(b.String()))
	req := route.Request{
		Authority: "svc.ns.svc.cluster.local:8080",
		Method:    "GET",
		Path:      "/api/v99/items?page=2",
		Header:    http.Header{"X-Tenant": {"tenant-99"}, "User-Agent": {"bench"}},
		Random:    95,
	}
	return table, req
}

func BenchmarkDecide100Routes(b *testing.B) {
	table, req := table100(b)
	if d := route.Decide(table, req); d.Cluster != "c99-b" {
		b.Fatalf("cluster %q, want c99-b", d.Cluster)
	}
	b.ReportAllocs()
	for b.Loop() {
		route.Decide(table, req)
	}
}

// TestDecideAllocations holds the hot path to its allocation budget: a
// decision that rewrites nothing allocates nothing.
func TestDecideAllocations(t *testing.T) {
	table, req := table100(t)
	if n := testing.AllocsPerRun(100, func() { route.Decide(table, req) }); n > 0 {
		t.Fatalf("Decide allocates %v times per call; want 0", n)
	}
}

// TestDecideConcurrent: a compiled table serves concurrent readers (run
// with -race).
func TestDecideConcurrent(t *testing.T) {
	table, req := table100(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := req
			for i := range 200 {
				r.Random = uint64(g*1000 + i)
				if d := route.Decide(table, r); d.Action != route.ActionForward {
					t.Errorf("no route for %+v", r)
					return
				}
			}
		})
	}
	wg.Wait()
}
