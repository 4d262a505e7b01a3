package proxy_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zmesh/zmesh/api/workload/security"
)

// The outbound side joins the app's connection to its tunnel before the
// server's ztunnel answered. An allowed connection's answer arrives as
// before; one the server's policy denies reaches the app as a reset, never
// as an orderly end it could take for an empty answer, and the client's
// ztunnel records it as a denied connect.
func TestMeshDenialAfterJoinResetsTheApp(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)

	got, err := client.call(app.addr, "ping")
	if err != nil || got != client.ip.String()+"|ping" {
		t.Fatalf("allowed call: %q, %v", got, err)
	}

	m.pol = []*security.Authorization{{
		Name: "deny-port", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}}}}},
	}}
	m.push()
	opened := a.opened(t)
	if n, err := denied(client, app.addr); !errors.Is(err, syscall.ECONNRESET) {
		if err == io.EOF {
			t.Fatalf("the denied app read an orderly end (%d bytes), want ECONNRESET", n)
		}
		t.Fatalf("the denied app read %d bytes, %v; want ECONNRESET", n, err)
	}

	waitFor(t, func() bool {
		for _, rec := range a.logLines("connection complete") {
			if rec["direction"] == "outbound" && rec["response_flags"] == "DENY" {
				if e, _ := rec["error"].(string); strings.Contains(e, "401") {
					return true
				}
			}
		}
		return false
	}, "the client's ztunnel logging the denied connect")
	if d := a.opened(t) - opened; d != 1 {
		t.Errorf("client's ztunnel counted %v connections opened for the denied one, want 1", d)
	}
	if v := closedWithFlags(t, a, "source", "DENY"); v != 1 {
		t.Errorf("client's ztunnel closed_total{reporter=source,response_flags=DENY} = %v, want 1", v)
	}
}

// denied connects from p to dst, writes a request and reads the answer:
// the bytes read and the error that ended it. The refusal may even beat
// the dial's own completion (the tunnel opens as soon as ztunnel accepts),
// and then the dial reports the reset.
func denied(p *pod, dst netip.AddrPort) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return 0, err
	}
	return c.Read(make([]byte, 100))
}

// closedWithFlags sums istio_tcp_connections_closed_total over the series
// with the given reporter and response_flags.
func closedWithFlags(t *testing.T, n *node, reporter, flags string) float64 {
	t.Helper()
	mf, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range mf {
		if f.GetName() != "istio_tcp_connections_closed_total" {
			continue
		}
		for _, mt := range f.Metric {
			labels := map[string]string{}
			for _, l := range mt.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["reporter"] == reporter && labels["response_flags"] == flags {
				sum += mt.GetCounter().GetValue()
			}
		}
	}
	return sum
}
