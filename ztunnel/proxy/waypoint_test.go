package proxy_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/internal/hbone"
)

// A pod behind its service's waypoint, through real captures and HBONE: a
// mesh client that dials the pod's address on the service's target port
// is refused by the pod's ztunnel (logged naming the waypoint and the
// peer, counted as a denial), as is any other identity that tunnels
// there itself; the waypoint's identity gets in; ports the service does
// not target stay open; use-waypoint: none lifts the rule; and with the
// waypoint's only replica unready, the client's ztunnel refuses the
// service rather than go to the pod directly.
func TestMeshServiceWaypointNotBypassable(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	wp := m.newPod(b, "demo", "waypoint", "waypoint")
	app := server.serve(t, 8080)
	other := server.serve(t, 9090)

	wpVIP, apiVIP := netip.MustParseAddr("10.96.9.1"), netip.MustParseAddr("10.96.0.10")
	const wpSvc, apiSvc = "demo/waypoint.demo.svc.cluster.local", "demo/api.demo.svc.cluster.local"
	m.svc = append(m.svc,
		&workload.Service{Name: "waypoint", Namespace: "demo", Hostname: "waypoint.demo.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: wpVIP.AsSlice()}}, Ports: []*workload.Port{{ServicePort: 15008, TargetPort: 15008}}},
		&workload.Service{Name: "api", Namespace: "demo", Hostname: "api.demo.svc.cluster.local",
			Addresses: []*workload.NetworkAddress{{Address: apiVIP.AsSlice()}}, Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}},
			Waypoint: &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: wpVIP.AsSlice()}}, HboneMtlsPort: 15008}})
	m.workload(wp).Services = map[string]*workload.PortList{wpSvc: {Ports: []*workload.Port{{ServicePort: 15008, TargetPort: 15008}}}}
	m.workload(server).Services = map[string]*workload.PortList{apiSvc: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}}}
	m.push()

	// The pod's address on the target port: the client's ztunnel tunnels
	// straight there (the pod has no waypoint of its own), the pod's
	// refuses.
	if got, err := client.call(app.addr, "bypass"); err == nil {
		t.Fatalf("a client dialling the pod's address reached the app: %q", got)
	}
	waitFor(t, func() bool {
		for _, rec := range b.logLines("connection complete") {
			r, _ := rec["reason"].(string)
			if strings.Contains(r, "behind waypoint "+wpSvc) && strings.Contains(r, "spiffe://cluster.local/ns/demo/sa/sleep") {
				return true
			}
		}
		return false
	}, "the refusal logged, naming the waypoint and the client")
	if n := deniedInbound(t, b.reg); n != 1 {
		t.Errorf("inbound connections closed with response_flags DENY on the pod's node: %v, want 1", n)
	}
	select {
	case p := <-app.peers:
		t.Fatalf("the app was reached by %s", p)
	default:
	}

	// Any identity tunnelling to the pod itself is refused the same way:
	// the client's own ztunnel is not what enforces it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := hboneConnect(ctx, m, client, server, app.addr)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Status != 401 {
		t.Fatalf("a CONNECT to the target port as the client: %v, want 401", err)
	}

	// The waypoint's identity is let in.
	st, err := hboneConnect(ctx, m, wp, server, app.addr)
	if err != nil {
		t.Fatalf("the waypoint was refused: %v", err)
	}
	if got, want := exchangeStream(t, st, "via waypoint"), wp.ip.String()+"|via waypoint"; got != want {
		t.Fatalf("app saw %q, want %q", got, want)
	}

	// A port the service does not target is not held.
	if got, err := client.call(other.addr, "other"); err != nil || got != client.ip.String()+"|other" {
		t.Fatalf("a port no bound service targets: %q %v", got, err)
	}

	// istio.io/use-waypoint: none on the pod lifts the rule.
	m.workload(server).WaypointExempt = true
	m.push()
	if got, err := client.call(app.addr, "exempt"); err != nil || got != client.ip.String()+"|exempt" {
		t.Fatalf("a pod labelled use-waypoint: none refused a direct client: %q %v", got, err)
	}
	m.workload(server).WaypointExempt = false
	for len(app.peers) > 0 { // the waypoint's and the exempt client's
		<-app.peers
	}

	// The waypoint's only replica unready: the client's ztunnel refuses
	// the service, and does not go to its pod instead.
	m.workload(wp).Status = workload.WorkloadStatus_UNHEALTHY
	m.push()
	if got, err := client.call(netip.AddrPortFrom(apiVIP, 80), "fallback"); err == nil {
		t.Fatalf("the service was reached with its waypoint unready: %q", got)
	}
	waitFor(t, func() bool {
		for _, rec := range a.logLines("connection complete") {
			e, _ := rec["error"].(string)
			if strings.Contains(e, "no healthy upstream: waypoint "+wpSvc) {
				return true
			}
		}
		return false
	}, "the client's ztunnel logging the unready waypoint by name")
	select {
	case p := <-app.peers:
		t.Fatalf("the app was reached by %s with the waypoint unready", p)
	default:
	}
}

// A service that comes behind a waypoint ends the live connections to its
// target port that did not come through the waypoint (a client cannot
// keep a bypass open across the binding); those to other ports stay.
func TestMeshBindingClosesDirectConnections(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	wp := m.newPod(b, "demo", "waypoint", "waypoint")
	held, free := server.echo(t, 8080), server.echo(t, 9090)

	wpVIP := netip.MustParseAddr("10.96.9.1")
	const wpSvc, apiSvc = "demo/waypoint.demo.svc.cluster.local", "demo/api.demo.svc.cluster.local"
	api := &workload.Service{Name: "api", Namespace: "demo", Hostname: "api.demo.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.10").AsSlice()}},
		Ports:     []*workload.Port{{ServicePort: 80, TargetPort: 8080}}}
	m.svc = append(m.svc, &workload.Service{Name: "waypoint", Namespace: "demo", Hostname: "waypoint.demo.svc.cluster.local",
		Addresses: []*workload.NetworkAddress{{Address: wpVIP.AsSlice()}}, Ports: []*workload.Port{{ServicePort: 15008, TargetPort: 15008}}}, api)
	m.workload(wp).Services = map[string]*workload.PortList{wpSvc: {}}
	m.workload(server).Services = map[string]*workload.PortList{apiSvc: {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}}}
	m.push()

	toHeld, toFree := client.dial(t, held), client.dial(t, free)
	for _, c := range []net.Conn{toHeld, toFree} {
		if err := exchange(c, "before the binding"); err != nil {
			t.Fatalf("before the binding: %v", err)
		}
	}

	api.Waypoint = &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Address: wpVIP.AsSlice()}}, HboneMtlsPort: 15008}
	m.push()
	// Far beyond a prompt reset; a connection left open runs into it.
	toHeld.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := toHeld.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the direct connection to the held port is still open after the binding: %v", err)
	}
	waitFor(t, func() bool {
		for _, rec := range b.logLines("connection closed: the destination is now behind a waypoint") {
			if r, _ := rec["reason"].(string); strings.Contains(r, "behind waypoint "+wpSvc) {
				return true
			}
		}
		return false
	}, "the reset logged naming the waypoint")
	if err := exchange(toFree, "after the binding"); err != nil {
		t.Fatalf("the connection to a port the service does not target was broken: %v", err)
	}
}

// deniedInbound sums the inbound connections closed as denied.
func deniedInbound(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "istio_tcp_connections_closed_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["response_flags"] == "DENY" && labels["reporter"] == "destination" {
				n += mt.GetCounter().GetValue()
			}
		}
	}
	return n
}
