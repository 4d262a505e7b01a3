package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
)

// withConnFilters installs a snapshot whose chain at vip has these
// connection filters (the policies on the waypoint as a workload) and,
// when set, these HTTP filters.
func (m *mesh) withConnFilters(t *testing.T, vip netip.AddrPort, conn, http []config.HTTPFilter) {
	t.Helper()
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vip]
	ch.ConnFilters = conn
	ch.HTTPFilters = http
	s.Chains[vip] = &ch
	m.proxy.Update(s)
}

// TestHTTPChainTunnelRBAC: the network RBAC filters heading an HTTP chain
// decide each tunnel before any of its HTTP is served. A tunnel from a
// principal the workload-scope ALLOW does not name is refused at CONNECT
// with 403 "RBAC: access denied" and reaches no pod (flag RBAC in the
// access log); a DENY naming the peer refuses it and is named; once the
// tunnel is allowed, the chain's own HTTP RBAC still decides each
// request on its own (both scopes must allow). On a sniffed port a
// denied tunnel sniffed as HTTP is closed unserved.
func TestHTTPChainTunnelRBAC(t *testing.T) {
	m := newMesh(t, bounds{})
	pod := m.pods[podV1]

	refused := func(vip netip.AddrPort) {
		t.Helper()
		before := len(pod.tunnels())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := m.tunnel(ctx, vip)
		var se *hbone.StatusError
		if err == nil {
			conn.Close()
			t.Fatalf("tunnel to %s accepted, want refused", vip)
		}
		if !errors.As(err, &se) || se.Status != 403 {
			t.Fatalf("tunnel to %s: %v, want 403", vip, err)
		}
		if n := len(pod.tunnels()); n != before {
			t.Errorf("%d tunnels reached the pod, want none", n-before)
		}
	}

	// Only another principal is allowed: sleep's tunnel is refused.
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, allowOther)}, nil)
	refused(vipHTTP)
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "" || rec.Protocol != "TCP" {
		t.Errorf("not allowed: record %+v, want flag RBAC, no policy", rec)
	}

	// A DENY naming sleep refuses it, and is named.
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, denySleep), tcpRBAC(t, allowSleepOn(vipHTTP.Port()))}, nil)
	refused(vipHTTP)
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "ns[default]-policy[deny-sleep]-rule[0]" {
		t.Errorf("denied: record flags %q policy %q, want RBAC, deny-sleep", rec.ResponseFlags, rec.PolicyName)
	}

	// Allowed at the tunnel, the requests are served...
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, allowSleepOn(vipHTTP.Port()))}, nil)
	if res, body := get(t, m.h1Client(vipHTTP), "http://reviews/v2"); res.StatusCode != 200 || body != "v2" {
		t.Errorf("allowed tunnel: %d %q, want served", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "-" {
		t.Errorf("allowed tunnel: flags %q", rec.ResponseFlags)
	}
	// ...unless the chain's own ALLOW (the targetRefs scope), which names
	// only another principal, refuses the request.
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, allowSleepOn(vipHTTP.Port()))},
		[]config.HTTPFilter{{Name: "envoy.filters.http.rbac", RBAC: tcpRBAC(t, allowOther).RBAC}})
	if res, body := get(t, m.h1Client(vipHTTP), "http://reviews/v2"); res.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("allowed tunnel, request not allowed: %d %q, want 403", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" {
		t.Errorf("request not allowed: flags %q", rec.ResponseFlags)
	}

	// A sniffed port: the tunnel is answered before its bytes are read,
	// so HTTP from a peer not allowed is closed unserved.
	m.withConnFilters(t, vipSniff, []config.HTTPFilter{tcpRBAC(t, allowOther)}, nil)
	before := len(pod.tunnels())
	if res, err := m.h1Client(vipSniff).Get("http://reviews/v2"); err == nil {
		res.Body.Close()
		t.Errorf("HTTP on a denied sniffed tunnel: %d, want the connection closed", res.StatusCode)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.Protocol != "TCP" {
		t.Errorf("sniffed HTTP denied: record %+v", rec)
	}
	if n := len(pod.tunnels()); n != before {
		t.Errorf("%d tunnels reached the pod, want none", n-before)
	}
}

// TestOpenTunnelRechecked: a new snapshot re-checks the open tunnels, as
// ztunnel re-checks its connections at a policy change: an HTTP tunnel
// serving keep-alive requests, and a TCP tunnel, are closed once a
// network RBAC filter no longer allows their peer; a tunnel still allowed
// stays open.
func TestOpenTunnelRechecked(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An HTTP/1.1 tunnel with a request served on it.
	conn, err := m.tunnel(ctx, vipHTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	roundTrip := func() error {
		if _, err := io.WriteString(conn, "GET /v2 HTTP/1.1\r\nHost: reviews\r\n\r\n"); err != nil {
			return err
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	m.obs.next(t)

	// A snapshot whose tunnel filters allow sleep leaves it open.
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, allowSleepOn(vipHTTP.Port()))}, nil)
	if err := roundTrip(); err != nil {
		t.Fatalf("still allowed: %v", err)
	}
	m.obs.next(t)

	// One allowing another principal only closes it.
	m.withConnFilters(t, vipHTTP, []config.HTTPFilter{tcpRBAC(t, allowOther)}, nil)
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("read %q from a tunnel no longer allowed, want it closed", b)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("tunnel no longer allowed is still open")
	}

	// A TCP tunnel: open and echoing, then denied by a new snapshot.
	m.withTCPFilters(t, vipTCP, nil, nil)
	tc, err := m.tunnel(ctx, vipTCP)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	testutil.Eventually(t, 10*time.Second, "the TCP tunnel tracked", func() error {
		if n := m.proxy.live.len(); n != 1 {
			return fmt.Errorf("%d open tunnels tracked", n)
		}
		return nil
	})
	m.withTCPFilters(t, vipTCP, []config.HTTPFilter{tcpRBAC(t, denySleep)}, nil)
	if _, err := io.ReadAll(tc); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("TCP tunnel no longer allowed is still open")
	}
	testutil.Eventually(t, 10*time.Second, "no tunnel tracked", func() error {
		if n := m.proxy.live.len(); n != 0 {
			return fmt.Errorf("%d open tunnels tracked", n)
		}
		return nil
	})
}
