package config

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
)

// FuzzCompileFilters feeds arbitrary wire bytes as an RBAC and as an
// HTTPFault configuration: compilation never panics, every refusal is a
// *NackError, and what compiles can be evaluated without panicking and
// keeps its invariants (policies sorted and non-empty, valid percentages
// and statuses).
func FuzzCompileFilters(f *testing.F) {
	r := &rbacfilterv3.RBAC{}
	testutil.ProtoYAML(f, policy("{andRules: {rules: [{notRule: {urlPath: {path: {prefix: /a}}}}, {destinationPortRange: {start: 1, end: 9}}]}}",
		"{orIds: {ids: [{metadata: {filter: istio_authn, path: [{key: request.auth.claims}, {key: g}], value: {listMatch: {oneOf: {stringMatch: {exact: x}}}}}}, {remoteIp: {addressPrefix: 10.0.0.0, prefixLen: 8}}]}}"), r)
	fc := &faultv3.HTTPFault{}
	testutil.ProtoYAML(f, "delay: {fixedDelay: 1s, percentage: {numerator: 5, denominator: MILLION}}\nabort: {grpcStatus: 3, percentage: {numerator: 1}}\nheaders: [{name: x, presentMatch: true}]\n", fc)
	for _, m := range []proto.Message{r, fc} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	req := &rbac.Request{
		HTTP:      route.Request{Method: "GET", Path: "/a?b", Authority: "svc", Header: http.Header{"X": {"1"}}},
		Principal: "spiffe://cluster.local/ns/a/sa/b", DirectRemoteIP: netip.MustParseAddr("10.1.1.1"),
		RemoteIP: netip.MustParseAddr("10.1.1.1"), DestinationIP: netip.MustParseAddr("10.2.2.2"), DestinationPort: 8,
		RequestPrincipal: "iss/sub", Claims: []rbac.Claim{{Path: []string{"g"}, Values: []string{"x"}}},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &rbacfilterv3.RBAC{}
		if proto.Unmarshal(data, r) == nil {
			s, err := CompileRBAC("r", r)
			var ne *NackError
			if err != nil && !errors.As(err, &ne) {
				t.Fatalf("refusal is not a *NackError: %v", err)
			}
			if err == nil {
				for _, e := range []*rbac.Engine{s.Rules, s.Shadow} {
					if e == nil {
						continue
					}
					for i, p := range e.Policies {
						if len(p.Permissions) == 0 || len(p.Principals) == 0 || i > 0 && e.Policies[i-1].Name >= p.Name {
							t.Fatalf("compiled an invalid policy set: %+v", e.Policies)
						}
					}
				}
				rbac.Evaluate(s, req)
			}
		}
		fc := &faultv3.HTTPFault{}
		if proto.Unmarshal(data, fc) == nil {
			ft, err := CompileFault("f", fc)
			var ne *NackError
			if err != nil && !errors.As(err, &ne) {
				t.Fatalf("refusal is not a *NackError: %v", err)
			}
			if err != nil {
				return
			}
			valid := func(p fault.Percentage) bool {
				return p.Denominator == 100 || p.Denominator == 10_000 || p.Denominator == 1_000_000
			}
			if ft.Delay != nil && (!valid(ft.Delay.Percent) || ft.Delay.Duration < 0) ||
				ft.Abort != nil && (!valid(ft.Abort.Percent) || ft.Abort.HTTPStatus < 200 || ft.Abort.HTTPStatus >= 600) {
				t.Fatalf("compiled an invalid fault: %+v", ft)
			}
			ft.Applies(&req.HTTP)
			fault.Decide(ft, 0, 1<<64-1)
		}
	})
}
