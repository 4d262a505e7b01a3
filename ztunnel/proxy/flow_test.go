package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/inpod"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if left := netenv.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "namespaces left behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

// Two nodes, a client pod on one and a server pod on the other: the
// client's plain TCP is captured, tunnelled over mutual TLS, and reaches the
// app from the client's own address. Nothing readable crosses the wire, and
// both ztunnels count and log the connection with both identities.
func TestMeshTunnelsAndPreservesSource(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)

	wire, err := m.lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	secret := "zmesh-secret-payload-" + strings.Repeat("x", 32)
	got, err := client.call(app.addr, secret)
	wire.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if want := client.ip.String() + "|" + secret; got != want {
		t.Fatalf("reply %q, want %q (the app must see the client's own address)", got, want)
	}
	if frames, _ := wire.Stats(); frames == 0 {
		t.Fatal("the capture saw no frames: it proves nothing")
	}
	if wire.Contains([]byte(secret)) {
		t.Fatal("plaintext payload visible on the underlay")
	}

	clientID := "spiffe://cluster.local/ns/demo/sa/sleep"
	serverID := "spiffe://cluster.local/ns/demo/sa/echo"
	for _, c := range []struct {
		n        *node
		reporter string
	}{{a, "source"}, {b, "destination"}} {
		waitFor(t, func() bool { return len(c.n.logLines("connection complete")) > 0 }, c.n.name+" access log")
		n := testutil.CollectAndCount(c.n.reg, "istio_tcp_connections_closed_total")
		if n != 1 {
			t.Errorf("%s: %d closed-connection series, want 1", c.n.name, n)
		}
		lint, err := testutil.GatherAndLint(c.n.reg)
		if err != nil || len(lint) > 0 {
			t.Errorf("%s: metrics lint: %v %v", c.n.name, err, lint)
		}
		mf, err := c.n.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, f := range mf {
			if f.GetName() != "istio_tcp_connections_opened_total" {
				continue
			}
			for _, mt := range f.Metric {
				labels := map[string]string{}
				for _, l := range mt.Label {
					labels[l.GetName()] = l.GetValue()
				}
				found = true
				for k, want := range map[string]string{
					"reporter": c.reporter, "source_principal": clientID, "destination_principal": serverID,
					"source_workload": "client", "destination_workload": "server",
					"source_workload_namespace": "demo", "destination_workload_namespace": "demo",
					"connection_security_policy": "mutual_tls",
				} {
					if labels[k] != want {
						t.Errorf("%s: label %s=%q, want %q", c.n.name, k, labels[k], want)
					}
				}
				if mt.GetCounter().GetValue() != 1 {
					t.Errorf("%s: opened=%v, want 1", c.n.name, mt.GetCounter().GetValue())
				}
			}
		}
		if !found {
			t.Errorf("%s: no istio_tcp_connections_opened_total", c.n.name)
		}
		rec := c.n.logLines("connection complete")[0]
		if rec["src.identity"] != clientID || rec["dst.identity"] != serverID {
			t.Errorf("%s: access log identities %v -> %v", c.n.name, rec["src.identity"], rec["dst.identity"])
		}
		// The log speaks for the local workload: the server received what
		// the client sent.
		key := map[string]string{"source": "bytes_sent", "destination": "bytes_recv"}[c.reporter]
		if rec[key] != float64(len(secret)) {
			t.Errorf("%s: access log %s=%v, want %d", c.n.name, key, rec[key], len(secret))
		}
	}
}

// A service VIP resolves to an endpoint and its target port; the app sees
// the client; the HBONE authority is the endpoint, not the VIP.
func TestMeshServiceVIP(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	s1 := m.newPod(b, "demo", "echo-1", "echo")
	s2 := m.newPod(a, "demo", "echo-2", "echo")
	s1.serve(t, 8080)
	s2.serve(t, 8080)
	vip := netip.MustParseAddr("10.96.0.10")
	m.svc = append(m.svc, &workload.Service{Name: "echo", Namespace: "demo", Hostname: "echo.demo.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{{Address: vip.AsSlice()}}, Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}})
	for _, p := range []*pod{s1, s2} {
		m.workload(p).Services = map[string]*workload.PortList{"demo/echo.demo.svc.cluster.local": {}}
	}
	m.push()
	seen := map[string]bool{}
	for range 4 {
		got, err := client.call(netip.AddrPortFrom(vip, 80), "hi")
		if err != nil {
			t.Fatal(err)
		}
		if got != client.ip.String()+"|hi" {
			t.Fatalf("reply %q", got)
		}
		seen[got] = true
	}
	// Round robin: both endpoints served (each logs one inbound completion).
	waitFor(t, func() bool {
		return len(b.logLines("connection complete")) >= 2 && len(a.logLines("connection complete")) >= 4
	}, "both endpoints used")
	// The destination side names the service the client addressed (from
	// Forwarded host=), as the source side does.
	for _, n := range []*node{a, b} {
		for _, rec := range n.logLines("connection complete") {
			if rec["dst.service"] != "echo.demo.svc.cluster.local" {
				t.Errorf("%s %v dst.service = %v, want echo.demo.svc.cluster.local", n.name, rec["direction"], rec["dst.service"])
			}
		}
	}
	// No port 81 on the service: refused.
	if _, err := client.call(netip.AddrPortFrom(vip, 81), "x"); err == nil {
		t.Fatal("a port the service does not have was connected")
	}
}

// L4 policy on the server side: DENY wins over ALLOW, an ALLOW that does
// not match refuses, plaintext from outside the mesh is accepted under
// PERMISSIVE and refused under STRICT (a DENY on not_principals presence).
func TestMeshPolicies(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	other := m.newPod(a, "other", "intruder", "default")
	plain := m.newPod(nil, "legacy", "plain", "default")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)

	ok := func(p *pod) bool {
		got, err := p.call(app.addr, "ping")
		return err == nil && got == p.ip.String()+"|ping"
	}
	check := func(name string, want map[*pod]bool) {
		t.Helper()
		for p, allowed := range want {
			if got := ok(p); got != allowed {
				t.Errorf("%s: %s allowed=%v, want %v", name, p.name, got, allowed)
			}
		}
	}
	check("no policy (PERMISSIVE)", map[*pod]bool{client: true, other: true, plain: true})

	principal := func(ns, sa string) *security.StringMatch {
		return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/" + ns + "/sa/" + sa}}
	}
	m.pol = []*security.Authorization{{
		Name: "allow-sleep", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{Principals: []*security.StringMatch{principal("demo", "sleep")}}}}}}},
	}}
	m.push()
	check("ALLOW sleep", map[*pod]bool{client: true, other: false, plain: false})
	waitFor(t, func() bool {
		for _, rec := range b.logLines("connection complete") {
			if r, _ := rec["reason"].(string); rec["src.identity"] == "spiffe://cluster.local/ns/other/sa/default" && strings.Contains(r, "ALLOW") {
				return true
			}
		}
		return false
	}, "a denial logged with its reason")

	m.pol = append(m.pol, &security.Authorization{
		Name: "deny-port", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}}}}},
	})
	m.push()
	check("DENY before ALLOW", map[*pod]bool{client: false})

	// STRICT for the server only: plaintext refused, mTLS fine.
	m.pol = []*security.Authorization{{
		Name: "strict", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{
			{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}}}}}},
	}}
	m.workload(server).AuthorizationPolicies = []string{"demo/strict"}
	m.push()
	check("STRICT", map[*pod]bool{client: true, other: true, plain: false})

	// A selector policy the workload names but ztunnel lacks: fail closed.
	m.workload(server).AuthorizationPolicies = []string{"demo/not-yet-pushed"}
	m.push()
	check("missing policy", map[*pod]bool{client: false})

	if got := testutil.CollectAndCount(b.reg, "istio_tcp_connections_closed_total"); got == 0 {
		t.Error("no closed-connection metrics on the server's node")
	}
}

// A destination outside the mesh is reached in plain TCP; one bound to a
// waypoint refuses a client that did not come through the waypoint.
func TestMeshPassthroughAndWaypointEnforcement(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	plain := m.newPod(nil, "legacy", "plain", "default")
	server := m.newPod(b, "demo", "server", "echo")
	plainApp := plain.serve(t, 9090)
	app := server.serve(t, 8080)

	if got, err := client.call(plainApp.addr, "out"); err != nil || got != client.ip.String()+"|out" {
		t.Fatalf("passthrough to a plain pod: %q %v", got, err)
	}

	// Only node B knows of the waypoint: node A tunnels straight to the
	// server, as a stale or bypassing client would.
	wp := m.newPod(b, "demo", "waypoint", "waypoint")
	m.push()
	wpCopy := *m.workload(server)
	wpCopy.Waypoint = &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: wp.ip.AsSlice()}}, HboneMtlsPort: 15008}
	u := m.update()
	u.Addresses[wpCopy.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: &wpCopy}}
	if err := b.store.Replace(u); err != nil {
		t.Fatal(err)
	}
	if _, err := client.call(app.addr, "bypass"); err == nil {
		t.Fatal("a client that skipped the waypoint reached the server")
	}
	waitFor(t, func() bool {
		for _, rec := range b.logLines("connection complete") {
			if r, _ := rec["reason"].(string); strings.Contains(r, "waypoint") {
				return true
			}
		}
		return false
	}, "waypoint bypass logged")

	// The waypoint's own identity is let through: connect as the waypoint
	// straight to the server's 15008.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := hboneConnect(ctx, m, wp, server, app.addr)
	if err != nil {
		t.Fatalf("the waypoint was refused: %v", err)
	}
	st.Close()
}

// The inbound HBONE port answers 400 to an authority that is not its pod.
func TestMeshInboundRejectsForeignAuthority(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := hboneConnect(ctx, m, client, server, netip.AddrPortFrom(client.ip, 8080))
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Status != 400 {
		t.Fatalf("CONNECT to another pod's address: %v, want 400", err)
	}
}

// SOCKS5 on the pod's loopback takes the same outbound path.
func TestMeshSOCKS5(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	got, err := socksCall(client, app.addr, "via socks")
	if err != nil {
		t.Fatal(err)
	}
	if got != client.ip.String()+"|via socks" {
		t.Fatalf("reply %q", got)
	}
}

// hboneConnect opens a CONNECT from pod src's namespace to dst's 15008 as
// src's identity, asking for target.
func hboneConnect(ctx context.Context, m *mesh, src, dst *pod, target netip.AddrPort) (*hbone.Stream, error) {
	cc, err := hboneClient(ctx, m, src, dst)
	if err != nil {
		return nil, err
	}
	return cc.Connect(ctx, &hbone.ConnectRequest{Target: target})
}

// hboneClient opens an HBONE connection from pod src's namespace to dst's
// 15008 as src's identity, as any holder of that identity could; it is
// closed when ctx ends.
func hboneClient(ctx context.Context, m *mesh, src, dst *pod) (*hbone.ClientConn, error) {
	// Marked like ztunnel's own sockets: unmarked TCP from a captured pod
	// stays inside the pod.
	var c net.Conn
	err := src.ns.Do(func() error {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, inpod.ProxyMark) })
			return serr
		}}
		var err error
		c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst.ip, 15008).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	srcID := identity.MustWorkloadID("cluster.local", src.namespace, src.sa)
	dstID := identity.MustWorkloadID("cluster.local", dst.namespace, dst.sa)
	svid, err := m.ca.Issue(srcID, time.Hour)
	if err != nil {
		return nil, err
	}
	certs := identity.NewStaticSource(m.ca.Bundle())
	certs.Put(svid)
	cc, err := hbone.NewClientConn(ctx, c, identity.ClientTLS(certs, srcID, []spiffeid.ID{dstID}), hbone.ClientOptions{})
	if err != nil {
		c.Close()
		return nil, err
	}
	context.AfterFunc(ctx, func() { cc.Close() })
	return cc, nil
}

// socksCall does call's exchange through the pod's SOCKS5 listener.
func socksCall(p *pod, dst netip.AddrPort, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", "127.0.0.1:15080")
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ip := dst.Addr().As4()
	req := []byte{5, 1, 0, 5, 1, 0, 1, ip[0], ip[1], ip[2], ip[3], byte(dst.Port() >> 8), byte(dst.Port())}
	if _, err := c.Write(req); err != nil {
		return "", err
	}
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(c, reply); err != nil {
		return "", fmt.Errorf("socks reply: %w", err)
	}
	if reply[0] != 5 || reply[1] != 0 || reply[3] != 0 {
		return "", fmt.Errorf("socks refused: % x", reply)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(c)
	return string(out), err
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
