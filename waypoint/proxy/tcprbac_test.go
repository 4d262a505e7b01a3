package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/config"
)

// tcpRBAC compiles an RBAC filter (YAML) as a TCP chain's filter.
func tcpRBAC(t *testing.T, y string) config.HTTPFilter {
	t.Helper()
	rb := &rbacv3.RBAC{}
	unmarshalYAML(t, y, rb)
	set, err := config.CompileRBAC("rbac", rb)
	if err != nil {
		t.Fatal(err)
	}
	return config.HTTPFilter{Name: "envoy.filters.network.rbac", RBAC: set}
}

// The client of the harness's tunnels is sleep.
const (
	denySleep = `
rules:
  action: DENY
  policies:
    ns[default]-policy[deny-sleep]-rule[0]:
      permissions: [{any: true}]
      principals: [{filter_state: {key: io.istio.peer_principal, string_match: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}}}]
`
	allowOther = `
rules:
  action: ALLOW
  policies:
    ns[default]-policy[allow-other]-rule[0]:
      permissions: [{any: true}]
      principals: [{filter_state: {key: io.istio.peer_principal, string_match: {exact: "spiffe://cluster.local/ns/default/sa/other"}}}]
`
	auditAll = `
rules:
  action: LOG
  policies:
    ns[default]-policy[audit]-rule[0]:
      permissions: [{any: true}]
      principals: [{any: true}]
`
)

// allowSleepOn is an ALLOW of sleep's connections to port.
func allowSleepOn(port uint16) string {
	return fmt.Sprintf(`
rules:
  action: ALLOW
  policies:
    ns[default]-policy[allow-sleep]-rule[0]:
      permissions: [{destination_port: %d}]
      principals: [{filter_state: {key: io.istio.peer_principal, string_match: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}}}]
`, port)
}

// withTCPFilters installs a snapshot whose chain at vip has these TCP
// filters (and, when set, these HTTP filters).
func (m *mesh) withTCPFilters(t *testing.T, vip netip.AddrPort, tcp []config.HTTPFilter, http []config.HTTPFilter) {
	t.Helper()
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vip]
	ch.TCPFilters = tcp
	if http != nil {
		ch.HTTPFilters = http
	}
	s.Chains[vip] = &ch
	m.proxy.Update(s)
}

// tcpRefused checks that a tunnel to vip carrying raw bytes is not
// forwarded: the CONNECT of a TCP chain is refused with 403, a sniffed
// tunnel is closed without a byte; no tunnel reaches the pod.
func tcpRefused(t *testing.T, m *mesh, vip netip.AddrPort, msg string) {
	t.Helper()
	before := len(m.pods[podV1].tunnels())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := m.tunnel(ctx, vip)
	if err != nil {
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Status != 403 {
			t.Fatalf("tunnel: %v, want refused with 403 or closed", err)
		}
	} else {
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(conn, msg)
		conn.(*clientTunnel).CloseWrite()
		if b, _ := io.ReadAll(conn); len(b) != 0 {
			t.Errorf("denied tunnel got %q back, want nothing", b)
		}
	}
	if n := len(m.pods[podV1].tunnels()); n != before {
		t.Errorf("%d tunnels reached the pod, want none", n-before)
	}
}

// TestTCPChainRBAC: a TCP chain's network RBAC filters decide each tunnel
// before a byte is forwarded: DENY matching the peer refuses it without
// dialling the pod (flag RBAC, the deciding policy recorded), an ALLOW
// naming the peer and the port forwards, an ALLOW naming only another
// peer refuses, an AUDIT policy lets it through and is recorded.
func TestTCPChainRBAC(t *testing.T) {
	m := newMesh(t, bounds{})

	m.withTCPFilters(t, vipTCP, []config.HTTPFilter{tcpRBAC(t, denySleep)}, nil)
	tcpRefused(t, m, vipTCP, "ping\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "ns[default]-policy[deny-sleep]-rule[0]" || rec.UpstreamHost.IsValid() || rec.Protocol != "TCP" ||
		rec.DestinationServiceName != "reviews" {
		t.Errorf("denied: record %+v, want flag RBAC, policy deny-sleep, the service, no upstream", rec)
	}

	m.withTCPFilters(t, vipTCP, []config.HTTPFilter{tcpRBAC(t, allowOther)}, nil)
	tcpRefused(t, m, vipTCP, "ping\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "" {
		t.Errorf("no ALLOW policy matched: record flags %q policy %q, want RBAC and none", rec.ResponseFlags, rec.PolicyName)
	}

	m.withTCPFilters(t, vipTCP, []config.HTTPFilter{tcpRBAC(t, auditAll), tcpRBAC(t, allowSleepOn(vipTCP.Port()))}, nil)
	tcpEcho(t, m, vipTCP, "ping\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "-" || rec.PolicyName != "ns[default]-policy[allow-sleep]-rule[0]" || rec.BytesReceived != 5 {
		t.Errorf("allowed: record %+v, want forwarded, policy allow-sleep", rec)
	}

	m.withTCPFilters(t, vipTCP, []config.HTTPFilter{tcpRBAC(t, auditAll)}, nil)
	tcpEcho(t, m, vipTCP, "ping\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "-" || rec.PolicyName != "ns[default]-policy[audit]-rule[0]" {
		t.Errorf("audited: record flags %q policy %q, want forwarded, policy audit", rec.ResponseFlags, rec.PolicyName)
	}
}

// TestSniffedPortRBAC: on a sniffed port HTTP is checked by the HTTP
// filters and raw bytes by the TCP filters. The TCP filters allow only
// another peer, so sleep's raw bytes are refused (the HTTP half's DENY
// would not have caught them), while its HTTP requests, which the TCP
// filters never see, are served unless the HTTP DENY matches.
func TestSniffedPortRBAC(t *testing.T) {
	m := newMesh(t, bounds{})
	httpDeny := &rbacv3.RBAC{}
	unmarshalYAML(t, `
rules:
  action: DENY
  policies:
    deny-evil:
      permissions: [{header: {name: x-evil, present_match: true}}]
      principals: [{any: true}]
`, httpDeny)
	set, err := config.CompileRBAC("rbac", httpDeny)
	if err != nil {
		t.Fatal(err)
	}
	m.withTCPFilters(t, vipSniff, []config.HTTPFilter{tcpRBAC(t, allowOther)}, []config.HTTPFilter{{Name: "envoy.filters.http.rbac", RBAC: set}})

	tcpRefused(t, m, vipSniff, "\x16\x03\x01 not http\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.Protocol != "TCP" || rec.UpstreamHost.IsValid() {
		t.Errorf("raw bytes: record %+v, want TCP denied by RBAC, no upstream", rec)
	}
	c := m.h1Client(vipSniff)
	if res, body := get(t, c, "http://reviews/v2"); res.StatusCode != 200 || body != "v2" {
		t.Errorf("HTTP on the sniffed port: %d %q, want served (the TCP filters do not see HTTP)", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "-" {
		t.Errorf("HTTP: flags %q", rec.ResponseFlags)
	}
	if res, body := get(t, c, "http://reviews/v2", "X-Evil", "1"); res.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("HTTP with X-Evil: %d %q, want denied by the HTTP filter", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.ResponseFlags != "RBAC" || rec.PolicyName != "deny-evil" {
		t.Errorf("HTTP with X-Evil: flags %q policy %q", rec.ResponseFlags, rec.PolicyName)
	}

	// Raw bytes from a peer the TCP filters allow are forwarded.
	m.withTCPFilters(t, vipSniff, []config.HTTPFilter{tcpRBAC(t, allowSleepOn(vipSniff.Port()))}, nil)
	tcpEcho(t, m, vipSniff, "\x16\x03\x01 not http\n")
	if rec := m.obs.next(t); rec.ResponseFlags != "-" || rec.Protocol != "TCP" || rec.PolicyName != "ns[default]-policy[allow-sleep]-rule[0]" {
		t.Errorf("allowed raw bytes: record %+v", rec)
	}
}
