package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"golang.org/x/net/websocket"

	"github.com/zmesh/zmesh/waypoint/config"
)

// TestRouteFault: as istiod configures a VirtualService's fault, the
// chain's fault filter is empty and the route carries the fault in its
// typed_per_filter_config, which replaces the filter's for that route.
func TestRouteFault(t *testing.T) {
	m := newMesh(t, bounds{})
	empty, err := config.CompileFault("fault", &faultv3.HTTPFault{})
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	ch.HTTPFilters = []config.HTTPFilter{{Name: "envoy.filters.http.fault", Fault: empty}}
	s.Chains[vipHTTP] = &ch
	s.Routes[ch.RouteConfig] = compileRoutes(t, `
name: inbound-vip|80|http|reviews.default.svc.cluster.local
virtual_hosts:
- name: reviews.default.svc.cluster.local:80
  domains: ["*"]
  routes:
  - name: jason
    match:
      prefix: /
      headers: [{name: end-user, string_match: {exact: jason}}]
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local"}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: {http_status: 503, percentage: {numerator: 100}}
  - name: default
    match: {prefix: /}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local"}
`)
	m.proxy.Update(s)
	c := m.h1Client(vipHTTP)
	res, body := get(t, c, "http://reviews/app", "End-User", "jason")
	if res.StatusCode != http.StatusServiceUnavailable || body != "fault filter abort" {
		t.Errorf("jason: %d %q, want 503 %q", res.StatusCode, body, "fault filter abort")
	}
	// The route is picked before the filters run (Envoy's order), so the
	// aborted request still names it.
	if rec := m.obs.next(t); rec.ResponseFlags != "FI" || rec.RouteName != "jason" {
		t.Errorf("jason: flags %q route %q, want FI and jason", rec.ResponseFlags, rec.RouteName)
	}
	if res, body = get(t, c, "http://reviews/app"); res.StatusCode != http.StatusOK || body != "v1" {
		t.Errorf("anyone else: %d %q, want 200 from v1", res.StatusCode, body)
	}
}

// TestWebSocketRecord: an upgraded request is recorded with its 101 (the
// reverse proxy writes it on the hijacked connection, not through the
// response writer).
func TestWebSocketRecord(t *testing.T) {
	m := newMesh(t, bounds{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vipHTTP)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := websocket.NewConfig("ws://reviews/ws", "http://reviews/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("websocket handshake: %v", err)
	}
	if err := websocket.Message.Send(ws, "hello"); err != nil {
		t.Fatal(err)
	}
	var got string
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "hello" {
		t.Fatalf("echo %q %v", got, err)
	}
	ws.Close()
	conn.Close()
	if rec := m.obs.next(t); rec.ResponseCode != http.StatusSwitchingProtocols || rec.Path != "/ws" {
		t.Errorf("record: code %d path %q, want 101 /ws", rec.ResponseCode, rec.Path)
	}
}
