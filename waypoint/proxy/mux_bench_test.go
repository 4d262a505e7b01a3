package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// defaultCluster is the cluster of the harness's /app route.
const defaultCluster = "inbound-vip|80|http|reviews.default.svc.cluster.local"

// BenchmarkUpstreamMux is kept-alive GETs from N concurrent clients, each
// on its own HBONE tunnel from the same client address, through the
// waypoint to one app that speaks HTTP/1.1 and h2c, with the upstream
// cluster speaking
//
//   - h1: HTTP/1.1, one upstream HBONE stream per concurrent request;
//   - h2: HTTP/2 (a DestinationRule's h2UpgradePolicy: UPGRADE), every
//     request a stream of one HTTP/2 connection on one HBONE stream;
//
// and gRPC unary calls from N clients, which go upstream as HTTP/2
// whatever the cluster says.
//
// Besides time and allocations it reports syscalls/op, the read and
// write system calls per request, a figure the machine's load hardly
// moves, and tunnels/op, the upstream HBONE streams the waypoint opened
// per request (none while its connections are kept alive). Time,
// allocations and syscalls count the whole process, as in BenchmarkHop:
// the clients, both HBONE ends the harness plays (the clients' ztunnel
// and the pod's), and the app.
func BenchmarkUpstreamMux(b *testing.B) {
	m := newMesh(b, bounds{})
	for _, proto := range []struct {
		name string
		p    upstream.Protocol
	}{{"h1", upstream.HTTP1}, {"h2", upstream.HTTP2}} {
		for _, n := range []int{1, 16, 64} {
			var gets []func(testing.TB)
			for range n {
				gets = append(gets, getter(m.benchClient(b), "http://reviews/app"))
			}
			b.Run(fmt.Sprintf("up=%s/clients=%d", proto.name, n), func(b *testing.B) {
				s := m.snapshot(b, "v1")
				s.Clusters[defaultCluster].HTTP.Protocol = proto.p
				m.proxy.Update(s)
				runClients(b, m, gets)
			})
		}
	}
	// Bulk: 1 MiB responses to 16 clients at once, through one HBONE
	// stream (h2, whose window they share) or sixteen (h1).
	var written atomic.Int64
	m.startStreamingApp(&written, 0)
	for _, proto := range []struct {
		name string
		p    upstream.Protocol
	}{{"h1", upstream.HTTP1}, {"h2", upstream.HTTP2}} {
		var gets []func(testing.TB)
		for range 16 {
			gets = append(gets, getter(m.benchClient(b), "http://reviews/app/size/1048576"))
		}
		b.Run(fmt.Sprintf("bulk/up=%s/clients=16", proto.name), func(b *testing.B) {
			s := m.snapshot(b, "v1")
			c, a := cluster(defaultCluster, proto.p, ep(podV1, bigPort, v1ID, "v1"))
			s.Clusters[defaultCluster], s.Assignments[defaultCluster] = c, a
			m.proxy.Update(s)
			b.SetBytes(1 << 20)
			runClients(b, m, gets)
		})
	}
	for _, n := range []int{1, 16, 64} {
		var calls []func(testing.TB)
		for range n {
			calls = append(calls, m.unaryCaller(b))
		}
		b.Run(fmt.Sprintf("grpc/clients=%d", n), func(b *testing.B) {
			m.proxy.Update(m.snapshot(b, "v1"))
			runClients(b, m, calls)
		})
	}
}

// runClients runs b.N requests, each of clients in its own goroutine
// taking the next until b.N are done.
func runClients(b *testing.B, m *mesh, clients []func(testing.TB)) {
	var wg sync.WaitGroup
	// Warm: every client's connection and the upstream pool open.
	for _, c := range clients {
		wg.Go(func() { c(b) })
	}
	wg.Wait()
	b.ReportAllocs()
	sys0, tunnels0 := processSyscalls(b), len(m.pods[podV1].tunnels())
	b.ResetTimer()
	var left atomic.Int64
	left.Store(int64(b.N))
	for _, c := range clients {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				c(b)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(processSyscalls(b)-sys0)/float64(b.N), "syscalls/op")
	b.ReportMetric(float64(len(m.pods[podV1].tunnels())-tunnels0)/float64(b.N), "tunnels/op")
}

// unaryCaller returns one gRPC client's unary call through the waypoint.
func (m *mesh) unaryCaller(t testing.TB) func(testing.TB) {
	cc, err := grpc.NewClient("passthrough:///reviews",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c := grpc_testing.NewTestServiceClient(cc)
	return func(t testing.TB) {
		if _, err := c.UnaryCall(context.Background(), &grpc_testing.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
}

// processSyscalls is the read and write system calls the process made so
// far (syscr + syscw of /proc/self/io).
func processSyscalls(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range []string{"syscr: ", "syscw: "} {
		i := bytes.Index(b, []byte(f))
		if i < 0 {
			t.Fatalf("/proc/self/io: no %q", f)
		}
		var v int64
		fmt.Sscan(string(b[i+len(f):]), &v)
		n += v
	}
	return n
}

// benchClient is one kept-alive HTTP/1.1 client of the waypoint, on
// tunnels to the test service, without a Client.Timeout (whose timer
// would count against the waypoint).
func (m *mesh) benchClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) },
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
