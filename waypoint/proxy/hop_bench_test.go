package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zmesh/zmesh/waypoint/telemetry"
)

// BenchmarkHop is one kept-alive HTTP/1.1 GET per op through each of
// three hops, with the same client and the same app:
//
//   - direct: client → app over loopback TCP, no proxy;
//   - reverseproxy: client → net/http/httputil.ReverseProxy → app, plain
//     HTTP on loopback, upstream connections kept alive: what a Go
//     program would write for the hop;
//   - waypoint: client → HBONE tunnel → the waypoint (route, telemetry
//     record) → HBONE → the app's pod.
//
// B/op and allocs/op count the whole process: the client and the app in
// each, and for waypoint also both HBONE ends the harness plays (the
// client's ztunnel and the pod's), which a ReverseProxy hop has no
// equivalent of. A proxy's own share is its figure minus direct's;
// `make bench-micro` prints each against direct and against reverseproxy.
func BenchmarkHop(b *testing.B) {
	m := newMesh(b, bounds{})
	for _, h := range hops(b, m) {
		b.Run(h.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.get(b)
			}
		})
	}
}

// BenchmarkHopParallel is BenchmarkHop with 64 clients at once, each on
// its own kept-alive connection, as the loaded benchmark's maxrps drives
// a proxy: what a busy proxy pays per request (pooled upstream
// connections under concurrency, scheduler hand-offs) that one request at
// a time does not show. The connections are opened before the timing
// starts.
func BenchmarkHopParallel(b *testing.B) {
	m := newMesh(b, bounds{})
	for _, h := range hops(b, m) {
		b.Run(h.name, func(b *testing.B) {
			// hopClients requests in the app at once: each client and
			// upstream pool holds hopClients connections.
			m.gather.Store(newGathering(hopClients))
			var wg sync.WaitGroup
			for range hopClients {
				wg.Go(func() { h.gather(b) })
			}
			wg.Wait()
			b.ReportAllocs()
			b.SetParallelism(max(1, hopClients/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					h.get(b)
				}
			})
		})
	}
}

// hopClients is how many connections BenchmarkHopParallel's clients keep.
const hopClients = 64

type hop struct {
	name   string
	get    func(t testing.TB) // one GET through the hop
	gather func(t testing.TB) // one GET of /app/fwd/gather through the hop
}

// hops returns the three hops of BenchmarkHop on m. The waypoint reports
// each request to the telemetry the waypoint runs with (Istio's metrics,
// and the access log, to /dev/null: a file, whose writes are system calls
// as stdout's are) rather than m's recorder, which keeps every record.
func hops(t testing.TB, m *mesh) []hop {
	reg := prometheus.NewRegistry()
	metrics, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	log, err := telemetry.NewAccessLog(devNull, 0, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close(); devNull.Close() })
	var o telemetry.Observer = telemetry.Multi{metrics, log}
	m.obs.instead.Store(&o)
	app := m.pods[podV1].apps[8080]
	client := func(tr *http.Transport) *http.Client {
		// BenchmarkHopParallel's clients keep hopClients connections,
		// as a load generator does: a client that finds none idle waits
		// for one rather than opening another.
		tr.MaxConnsPerHost = hopClients
		tr.MaxIdleConnsPerHost = hopClients
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	target, err := url.Parse("http://" + app)
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
	t.Cleanup(up.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
		Transport: up,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rp}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	mk := func(name string, c *http.Client, base string) hop {
		return hop{name, getter(c, base+"/app"), getter(c, base+"/app/fwd/gather")}
	}
	return []hop{
		mk("direct", client(&http.Transport{DisableCompression: true}), "http://"+app),
		mk("reverseproxy", client(&http.Transport{DisableCompression: true}), "http://"+ln.Addr().String()),
		// The same client as the other hops (no Client.Timeout, whose
		// timer and contexts would count against the waypoint), dialling
		// HBONE tunnels as a client's ztunnel does.
		mk("waypoint", client(&http.Transport{
			DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) },
			DisableCompression: true,
		}), "http://reviews"),
	}
}

func getter(c *http.Client, url string) func(testing.TB) {
	return func(t testing.TB) {
		res, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatal(res.Status)
		}
	}
}
