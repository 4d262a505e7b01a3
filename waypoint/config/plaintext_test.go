package config

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// TestPlaintextEndpoint: an endpoint outside the mesh is said explicitly
// (tunnel "none", no identity) and compiles to a plaintext endpoint; every
// ambiguous or dangerous variant is refused with its path.
func TestPlaintextEndpoint(t *testing.T) {
	one := func(addr, md string) string {
		return "cluster_name: c\nendpoints:\n- lb_endpoints:\n    - endpoint: {address: {socket_address: {address: \"" + addr + "\", port_value: 80}}}\n      metadata: {filter_metadata: {zmesh: " + md + "}}\n"
	}
	got, err := CompileAssignment(parseCLA(t, one("192.0.2.10", "{tunnel: none, labels: {app: ext}}")))
	if err != nil {
		t.Fatal(err)
	}
	want := []upstream.Endpoint{{Addr: netip.MustParseAddrPort("192.0.2.10:80"), Weight: 1, Plaintext: true, Labels: map[string]string{"app": "ext"}}}
	if eps := got.Priorities[0][0].Endpoints; !reflect.DeepEqual(eps, want) {
		t.Errorf("got %+v, want %+v", eps, want)
	}
	// "hbone" is the default said aloud: the identity is still required.
	got, err = CompileAssignment(parseCLA(t, one("10.0.0.1", "{tunnel: hbone, identity: \"spiffe://td/ns/a/sa/b\"}")))
	if err != nil {
		t.Fatal(err)
	}
	if ep := got.Priorities[0][0].Endpoints[0]; ep.Plaintext || ep.Identity != "spiffe://td/ns/a/sa/b" {
		t.Errorf("hbone endpoint compiled to %+v", ep)
	}

	const p = `endpoints "c": endpoints[0].lb_endpoints[0]`
	const m = p + `.metadata.filter_metadata["zmesh"]`
	for _, tc := range []struct{ name, yaml, want string }{
		{"plaintext with identity", one("192.0.2.10", "{tunnel: none, identity: \"spiffe://td/ns/a/sa/b\"}"),
			m + `.identity: set on an endpoint with tunnel "none": a plaintext endpoint proves no identity`},
		{"hbone without identity", one("10.0.0.1", "{tunnel: hbone}"), m + `.identity: required: the endpoint's SPIFFE identity`},
		{"unknown tunnel", one("10.0.0.1", "{tunnel: tls, identity: \"spiffe://td/ns/a/sa/b\"}"), m + `.tunnel: "tls" not supported (only "hbone" or "none")`},
		{"tunnel not a string", one("10.0.0.1", "{tunnel: 1}"), m + `.tunnel: must be a string`},
		{"plaintext loopback", one("127.0.0.1", "{tunnel: none}"),
			p + `.endpoint.address.socket_address.address: 127.0.0.1 cannot be a plaintext endpoint (loopback or link-local)`},
		{"plaintext ipv6 loopback", one("::1", "{tunnel: none}"),
			p + `.endpoint.address.socket_address.address: ::1 cannot be a plaintext endpoint (loopback or link-local)`},
		{"plaintext link-local", one("169.254.169.254", "{tunnel: none}"),
			p + `.endpoint.address.socket_address.address: 169.254.169.254 cannot be a plaintext endpoint (loopback or link-local)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileAssignment(parseCLA(t, tc.yaml))
			wantNack(t, tc.name, err, tc.want)
		})
	}
}
