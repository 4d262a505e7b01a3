package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/hbone"
)

// allowFrom is an ALLOW policy of namespace ns admitting only source ip.
func allowFrom(ns string, ip netip.Addr) *security.Authorization {
	return &security.Authorization{
		Name: "allow-" + ip.String(), Namespace: ns, Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			SourceIps: []*security.Address{{Address: ip.AsSlice(), Length: uint32(ip.BitLen())}},
		}}}}}},
	}
}

// exchangeStream sends msg on an open tunnel, half-closes and returns the
// app's reply ("<peer ip>|<msg>" from pod.serve).
func exchangeStream(t *testing.T, st *hbone.Stream, msg string) string {
	t.Helper()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	b, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return string(b)
}

// An attacker holding a mesh identity sends Forwarded: for=<an address an
// ALLOW ipBlocks rule trusts>. The destination's ztunnel takes the
// tunnel's TCP peer instead: the policy refuses the attacker, and where
// the attacker is allowed the app sees its real address. The destination's
// waypoint is believed.
func TestMeshForwardedSpoofIgnored(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	trusted := m.newPod(a, "demo", "trusted", "trusted")
	attacker := m.newPod(a, "evil", "attacker", "default")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	m.pol = []*security.Authorization{allowFrom("demo", trusted.ip)}
	m.push()

	if got, err := trusted.call(app.addr, "ping"); err != nil || got != trusted.ip.String()+"|ping" {
		t.Fatalf("the trusted pod was refused by its own ALLOW rule: %q %v", got, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := hboneClient(ctx, m, attacker, server)
	if err != nil {
		t.Fatal(err)
	}
	spoofed := netip.AddrPortFrom(trusted.ip, 40000)
	_, err = cc.Connect(ctx, &hbone.ConnectRequest{Target: app.addr, Source: spoofed})
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Status != 401 {
		t.Fatalf("a spoofed Forwarded for=%s from %s: %v, want 401 (the ALLOW rule names %s only)", spoofed, attacker.ip, err, trusted.ip)
	}
	select {
	case peer := <-app.peers:
		if peer != trusted.ip {
			t.Fatalf("the app was reached by %s", peer)
		}
	default:
	}
	waitFor(t, func() bool { return len(b.logLines("forwarded address ignored")) > 0 }, "the ignored Forwarded logged")

	// Let the attacker's real address in: the app must see that address,
	// not the one it claims.
	m.pol = []*security.Authorization{allowFrom("demo", attacker.ip)}
	m.push()
	st, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: app.addr, Source: spoofed})
	if err != nil {
		t.Fatalf("the attacker's own address is allowed, yet: %v", err)
	}
	if got, want := exchangeStream(t, st, "hi"), attacker.ip.String()+"|hi"; got != want {
		t.Fatalf("app saw %q, want %q (the tunnel's peer, not the forwarded address)", got, want)
	}

	// The server's waypoint speaks for its clients: its Forwarded is
	// believed, for policy and for the app.
	wp := m.newPod(b, "demo", "waypoint", "waypoint")
	m.workload(server).Waypoint = &workload.GatewayAddress{
		Destination:   &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: wp.ip.AsSlice()}},
		HboneMtlsPort: 15008,
	}
	m.pol = []*security.Authorization{allowFrom("demo", trusted.ip)}
	m.push()
	wcc, err := hboneClient(ctx, m, wp, server)
	if err != nil {
		t.Fatal(err)
	}
	st, err = wcc.Connect(ctx, &hbone.ConnectRequest{Target: app.addr, Source: netip.AddrPortFrom(trusted.ip, 40001)})
	if err != nil {
		t.Fatalf("the waypoint forwarding the trusted pod was refused: %v", err)
	}
	if got, want := exchangeStream(t, st, "via waypoint"), trusted.ip.String()+"|via waypoint"; got != want {
		t.Fatalf("app saw %q, want %q (the address the waypoint forwards)", got, want)
	}
}

// ztunnel's own ports are no destination: a CONNECT naming one gets 400 at
// once, a plaintext connection to the pod's 15006 or 15001 from outside is
// closed at once, and a mesh client's connection to them is refused by its
// own ztunnel. None of them makes a ztunnel connect to itself.
func TestMeshSelfCallRefused(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	plain := m.newPod(nil, "legacy", "plain", "default")
	server := m.newPod(b, "demo", "server", "echo")
	server.serve(t, 8080)
	openedBefore := b.opened(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := hboneClient(ctx, m, client, server)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{15001, 15006, 15008, 15080, 15000, 15020, 15021} {
		target := netip.AddrPortFrom(server.ip, port)
		_, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: target, Source: netip.AddrPortFrom(server.ip, 1)})
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Status != 400 {
			t.Errorf("CONNECT %s: %v, want 400", target, err)
		}
	}

	// Plaintext from outside the mesh straight to the pod's proxy ports,
	// and a mesh client asking for them: closed without waiting.
	for _, c := range []struct {
		from *pod
		port uint16
	}{{plain, 15006}, {plain, 15001}, {client, 15006}, {client, 15001}} {
		dst := netip.AddrPortFrom(server.ip, c.port)
		got, err := callTimeout(c.from, dst, "loop?", 3*time.Second)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s → %s hung: %v", c.from.name, dst, err)
		} else if err == nil {
			t.Errorf("%s → %s answered %q, want a refusal", c.from.name, dst, got)
		}
	}

	// No loop: the server's ztunnel recorded at most the refused
	// connections themselves (the plaintext one to 15001 is an outbound
	// connection refused by its plan); a loop records one per hop,
	// hundreds a second.
	time.Sleep(500 * time.Millisecond)
	if n := b.opened(t) - openedBefore; n > 1 {
		t.Errorf("the server's ztunnel opened %v connections for requests it refused at once, want at most 1", n)
	}
	if len(b.logLines("hbone request refused")) == 0 || len(b.logLines("plaintext connection refused")) == 0 {
		t.Errorf("refusals not logged:\n%s", b.logs.String())
	}
}

// A peer that gets refused as fast as it can ask does not flood the log:
// per class of refusal a burst, then a few lines a second, the rest
// counted in the next line's "suppressed".
func TestMeshRejectionLogBounded(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	attacker := m.newPod(a, "evil", "attacker", "default")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	m.pol = []*security.Authorization{allowFrom("demo", server.ip)}
	m.push()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc, err := hboneClient(ctx, m, attacker, server)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	start := time.Now()
	for i := range n {
		// Alternately: refused by policy (401), a foreign authority (400),
		// ztunnel's own port (400), a spoofed Forwarded (401, and a debug
		// line).
		req := &hbone.ConnectRequest{Target: app.addr}
		switch i % 4 {
		case 1:
			req.Target = netip.AddrPortFrom(attacker.ip, 8080)
		case 2:
			req.Target = netip.AddrPortFrom(server.ip, 15006)
		case 3:
			req.Source = netip.AddrPortFrom(server.ip, 1)
		}
		if _, err := cc.Connect(ctx, req); err == nil {
			t.Fatalf("request %d (%s) was let through", i, req.Target)
		}
	}
	elapsed := time.Since(start)
	// Lines a class may write in that time: the burst, the rate, and one
	// for rounding.
	bound := 20 + 2*int(elapsed.Seconds()+1) + 1
	denied := 0
	for _, rec := range b.logLines("connection complete") {
		if rec["response_flags"] == "DENY" {
			denied++
		}
	}
	refused := 0
	for _, rec := range b.logLines("hbone request refused") {
		if strings.Contains(rec["reason"].(string), "own ports") {
			refused++
		}
	}
	counts := map[string]int{
		"denied (access log)":       denied,
		"self-call":                 refused,
		"authority":                 len(b.logLines("hbone request refused")) - refused,
		"forwarded address ignored": len(b.logLines("forwarded address ignored")),
	}
	t.Logf("%d refusals in %v: log lines %v (bound %d per class)", n, elapsed.Round(time.Millisecond), counts, bound)
	for class, got := range counts {
		if got == 0 || got > bound {
			t.Errorf("%s: %d log lines for %d refusals in %v, want 1..%d", class, got, n/4, elapsed, bound)
		}
	}
	if got := closedDenied(t, b); got < n/2 {
		t.Errorf("metrics counted %v denied connections, want all %d: only the log is bounded", got, n/2)
	}
}

// closedDenied is the ztunnel's istio_tcp_connections_closed_total with
// response_flags DENY.
func closedDenied(t *testing.T, z *node) float64 {
	t.Helper()
	mf, err := z.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range mf {
		if f.GetName() != "istio_tcp_connections_closed_total" {
			continue
		}
		for _, mt := range f.Metric {
			for _, l := range mt.Label {
				if l.GetName() == "response_flags" && l.GetValue() == "DENY" {
					n += mt.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// A NAMESPACE-scoped service is reached from its own namespace only: a
// client of another namespace is refused by its own ztunnel, while the same
// backends behind a public service stay reachable to it.
func TestMeshServiceVisibility(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	local := m.newPod(a, "demo", "client", "sleep")
	foreign := m.newPod(a, "other", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	server.serve(t, 8080)
	private, public := netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("10.96.0.21")
	for _, s := range []struct {
		name string
		vip  netip.Addr
		vis  workload.Service_Visibility
	}{{"private", private, workload.Service_NAMESPACE}, {"public", public, workload.Service_PUBLIC}} {
		m.svc = append(m.svc, &workload.Service{Name: s.name, Namespace: "demo", Hostname: s.name + ".demo.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: s.vip.AsSlice()}}, Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}},
			Visibility: s.vis})
	}
	m.workload(server).Services = map[string]*workload.PortList{
		"demo/private.demo.svc.cluster.local": {}, "demo/public.demo.svc.cluster.local": {},
	}
	m.push()

	if got, err := local.call(netip.AddrPortFrom(private, 80), "hi"); err != nil || got != local.ip.String()+"|hi" {
		t.Fatalf("a client of the service's namespace: %q %v", got, err)
	}
	if got, err := foreign.call(netip.AddrPortFrom(public, 80), "hi"); err != nil || got != foreign.ip.String()+"|hi" {
		t.Fatalf("another namespace's client to the public service: %q %v", got, err)
	}
	if got, err := foreign.call(netip.AddrPortFrom(private, 80), "hi"); err == nil {
		t.Fatalf("another namespace's client reached the NAMESPACE-scoped service: %q", got)
	}
	waitFor(t, func() bool {
		for _, rec := range a.logLines("connection complete") {
			if e, _ := rec["error"].(string); strings.Contains(e, "not visible") {
				return true
			}
		}
		return false
	}, "the refusal logged")
}
