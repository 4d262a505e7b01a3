package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"testing"
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
	app := m.pods[podV1].apps[8080]
	b.Run("direct", func(b *testing.B) {
		tr := &http.Transport{DisableCompression: true}
		defer tr.CloseIdleConnections()
		benchGets(b, &http.Client{Transport: tr}, "http://"+app+"/app")
	})
	b.Run("reverseproxy", func(b *testing.B) {
		target, err := url.Parse("http://" + app)
		if err != nil {
			b.Fatal(err)
		}
		up := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
		defer up.CloseIdleConnections()
		rp := &httputil.ReverseProxy{
			Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
			Transport: up,
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: rp}
		go srv.Serve(ln)
		defer srv.Close()
		tr := &http.Transport{DisableCompression: true}
		defer tr.CloseIdleConnections()
		benchGets(b, &http.Client{Transport: tr}, "http://"+ln.Addr().String()+"/app")
	})
	b.Run("waypoint", func(b *testing.B) {
		// The same client as the other hops (no Client.Timeout, whose
		// timer and context would count against the waypoint), dialling
		// HBONE tunnels as a client's ztunnel does.
		tr := &http.Transport{
			DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) },
			DisableCompression: true,
		}
		defer tr.CloseIdleConnections()
		benchGets(b, &http.Client{Transport: tr}, "http://reviews/app")
	})
}
