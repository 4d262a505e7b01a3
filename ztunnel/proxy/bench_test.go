package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"
)

// The cost of the mesh: each benchmark runs the same traffic between two
// plain hosts ("direct", the baseline) and between a client pod and a server
// pod on two nodes, through both ztunnels ("mesh": capture, HBONE over
// mutual TLS, the app dialled from the client's address). -benchmem counts
// the ztunnels' allocations too: they run in this process.

// benchPair is a client and an echo (or sink) address for one variant.
type benchPair struct {
	name   string
	client *pod
	echo   netip.AddrPort
	sink   netip.AddrPort
}

func benchTopology(b *testing.B) []benchPair {
	b.Helper()
	m := newMesh(b)
	na, nb := m.newNode("node-a"), m.newNode("node-b")
	pc, ps := m.newPod(nil, "legacy", "plain-client", "default"), m.newPod(nil, "legacy", "plain-server", "default")
	mc, ms := m.newPod(na, "demo", "client", "sleep"), m.newPod(nb, "demo", "server", "echo")
	pairs := []benchPair{
		{name: "direct", client: pc, echo: ps.echo(b, 9090), sink: ps.sink(b, 9091)},
		{name: "mesh", client: mc, echo: ms.echo(b, 9090), sink: ms.sink(b, 9091)},
	}
	// Warm both paths (certificates, the HBONE pool) before measuring.
	for _, p := range pairs {
		c := p.client.dial(b, p.echo)
		if err := exchange(c, "warm"); err != nil {
			b.Fatalf("%s: %v", p.name, err)
		}
		c.Close()
	}
	return pairs
}

// New TCP connection, 1 KiB echoed, close: per-connection cost (capture,
// a stream on the pooled tunnel, the transparent dial to the app).
func BenchmarkConnectEcho(b *testing.B) {
	msg := bytes.Repeat([]byte{'x'}, 1024)
	for _, p := range benchTopology(b) {
		b.Run(p.name, func(b *testing.B) {
			buf := make([]byte, len(msg))
			b.ReportAllocs()
			created := goroutinesCreated()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := p.client.ns.Dial(ctx, "tcp", p.echo.String())
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			// Load-independent, like allocs/op: two of them are the
			// benchmark's own (its dial in the namespace, the echo's
			// handler), the rest the ztunnels'.
			b.ReportMetric(float64(goroutinesCreated()-created)/float64(b.N), "goroutines/op")
		})
	}
}

// goroutinesCreated is how many goroutines the process has started.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// 1 KiB ping-pong on one long-lived connection: per-message latency.
func BenchmarkRequestResponse(b *testing.B) {
	msg := bytes.Repeat([]byte{'x'}, 1024)
	for _, p := range benchTopology(b) {
		b.Run(p.name, func(b *testing.B) {
			c := p.client.dial(b, p.echo)
			buf := make([]byte, len(msg))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// 64 KiB writes one way on one connection until the sink confirms it read
// everything: throughput.
func BenchmarkBulk(b *testing.B) {
	chunk := bytes.Repeat([]byte{'x'}, 64<<10)
	for _, p := range benchTopology(b) {
		b.Run(p.name, func(b *testing.B) {
			c := p.client.dial(b, p.sink)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			var sent int64
			for b.Loop() {
				n, err := c.Write(chunk)
				if err != nil {
					b.Fatal(err)
				}
				sent += int64(n)
			}
			// Count delivery, not buffering, in the time.
			c.CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			reply, err := io.ReadAll(c)
			if err != nil || string(reply) != strconv.FormatInt(sent, 10) {
				b.Fatalf("sink read %q of %d bytes: %v", reply, sent, err)
			}
		})
	}
}

// sink is a TCP server in a pod that discards what it reads and, when the
// client half-closes, answers how many bytes that was.
func (p *pod) sink(t testing.TB, port uint16) netip.AddrPort {
	t.Helper()
	p.listen(t, port, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprint(c, n)
	})
	return netip.AddrPortFrom(p.ip, port)
}
