package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
)

// consumerRoutesYAML routes the clients of namespace consumer (their
// routes match the tunnel's peer principal) apart from everyone else, as
// zmeshd writes a Gateway API consumer route.
const consumerRoutesYAML = `
name: "inbound-vip|80|http|reviews.default.svc.cluster.local"
virtual_hosts:
- name: reviews
  domains: ["*"]
  routes:
  - name: consumer.add-header.0.0
    match:
      path_separated_prefix: /app
      filter_state:
      - key: io.istio.peer_principal
        string_match: {safe_regex: {regex: "spiffe://[^/]+/ns/consumer/sa/[^/]+"}}
    route: {cluster: "inbound-vip|80|http/v2|reviews.default.svc.cluster.local"}
    response_headers_to_add:
    - header: {key: x-header-set, value: set}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
  - name: no-route|consumer
    match:
      prefix: /
      filter_state:
      - key: io.istio.peer_principal
        string_match: {safe_regex: {regex: "spiffe://[^/]+/ns/consumer/sa/[^/]+"}}
    direct_response: {status: 404}
  - name: producer
    match: {prefix: /}
    route: {cluster: "inbound-vip|80|http/v1|reviews.default.svc.cluster.local"}
`

// TestConsumerRoutesByPeerIdentity: two clients with certificates of
// different namespaces, through the same waypoint to the same Service, are
// routed apart by the identity their tunnels proved, whatever headers they
// send.
func TestConsumerRoutesByPeerIdentity(t *testing.T) {
	m := newMesh(t, bounds{})
	s := m.snapshot(t, "v1")
	const rc = "inbound-vip|80|http|reviews.default.svc.cluster.local"
	s.Routes[rc] = compileRoutes(t, consumerRoutesYAML)
	m.proxy.Update(s)

	consumer, producer := m.h1ClientAs(vipHTTP, consumerID), m.h1ClientAs(vipHTTP, sleepID)
	for _, c := range []struct {
		name   string
		client *http.Client
		path   string
		header []string
		status int
		body   string
		set    string // x-header-set in the response
		route  string
	}{
		{"the consumer namespace's client gets its route", consumer, "/app", nil, 200, "v2", "set", "consumer.add-header.0.0"},
		{"and 404 where its routes match nothing", consumer, "/other", nil, 404, "", "", "no-route|consumer"},
		{"another namespace's client gets the producer's route", producer, "/app", nil, 200, "v1", "", "producer"},
		{"a header naming the consumer's identity changes nothing", producer, "/app",
			[]string{"X-Forwarded-Client-Cert", "URI=" + consumerID.String(), "Io.istio.peer_principal", consumerID.String()}, 200, "v1", "", "producer"},
	} {
		res, body := get(t, c.client, "http://reviews"+c.path, c.header...)
		if res.StatusCode != c.status || body != c.body || res.Header.Get("X-Header-Set") != c.set {
			t.Errorf("%s: %d %q x-header-set %q; want %d %q %q", c.name, res.StatusCode, body, res.Header.Get("X-Header-Set"), c.status, c.body, c.set)
		}
		if rec := m.obs.next(t); rec.RouteName != c.route {
			t.Errorf("%s: access log route %q, want %q", c.name, rec.RouteName, c.route)
		}
	}
}

// h1ClientAs speaks HTTP/1.1 over tunnels to target with id's certificate.
func (m *mesh) h1ClientAs(target netip.AddrPort, id spiffeid.ID) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", m.addr)
			if err != nil {
				return nil, err
			}
			cc, err := hbone.NewClientConn(ctx, nc, identity.ClientTLS(m.src, id, []spiffeid.ID{waypointID}), hbone.ClientOptions{})
			if err != nil {
				nc.Close()
				return nil, err
			}
			st, err := cc.Connect(ctx, &hbone.ConnectRequest{Target: target})
			if err != nil {
				cc.Close()
				return nil, err
			}
			return &clientTunnel{Stream: st, cc: cc}, nil
		},
		DisableCompression: true,
	}
	m.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}
