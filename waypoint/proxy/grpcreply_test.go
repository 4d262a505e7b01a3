package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/waypoint/config"
)

// directBody is a direct response's body with what grpc-message must
// percent-encode: '%', a newline and UTF-8.
const directBody = "slow down: 100% busy\n✋"

// grpcReplyMesh is the test mesh with routes and filters that answer a
// request locally by its x-case header: empty (a cluster without
// endpoints), timeout (a route timeout), direct (a direct response), deny
// (RBAC), fault (a gRPC fault abort), impostor (an endpoint whose peer
// fails the identity check), ok (the gRPC app); any other case
// has no route. EmptyCall requires a JWT.
func grpcReplyMesh(t *testing.T) *mesh {
	m := newMesh(t, bounds{})
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	rb := &rbacv3.RBAC{}
	unmarshalYAML(t, `
rules:
  action: DENY
  policies:
    deny-case:
      permissions: [{header: {name: x-case, string_match: {exact: deny}}}]
      principals: [{any: true}]
`, rb)
	set, err := config.CompileRBAC("rbac", rb)
	if err != nil {
		t.Fatal(err)
	}
	fl := &faultv3.HTTPFault{}
	unmarshalYAML(t, `
abort: {grpc_status: 8, percentage: {numerator: 100}}
headers: [{name: x-case, string_match: {exact: fault}}]
`, fl)
	f, err := config.CompileFault("fault", fl)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	jc := &jwtv3.JwtAuthentication{}
	unmarshalYAML(t, fmt.Sprintf(`
providers:
  origins-0:
    issuer: testing@secure.istio.io
    local_jwks: {inline_string: %q}
rules:
- match: {prefix: /grpc.testing.TestService/EmptyCall}
  requires: {provider_name: origins-0}
`, jwks), jc)
	jf, err := config.CompileJWT("jwt", jc)
	if err != nil {
		t.Fatal(err)
	}
	ch.HTTPFilters = []config.HTTPFilter{
		{Name: "envoy.filters.http.jwt_authn", JWT: jf},
		{Name: "envoy.filters.http.rbac", RBAC: set},
		{Name: "envoy.filters.http.fault", Fault: f},
	}
	s.Chains[vipHTTP] = &ch
	s.Routes[ch.RouteConfig] = compileRoutes(t, fmt.Sprintf(`
name: inbound-vip|80|http|reviews.default.svc.cluster.local
virtual_hosts:
- name: reviews.default.svc.cluster.local:80
  domains: ["*"]
  routes:
  - name: empty
    match: {prefix: /, headers: [{name: x-case, string_match: {exact: empty}}]}
    route: {cluster: "inbound-vip|80|http/empty|reviews.default.svc.cluster.local"}
  - name: timeout
    match: {prefix: /, headers: [{name: x-case, string_match: {exact: timeout}}]}
    route: {cluster: "inbound-vip|80|http|reviews.default.svc.cluster.local", prefix_rewrite: /wait, timeout: 0.3s}
  - name: direct
    match: {prefix: /, headers: [{name: x-case, string_match: {exact: direct}}]}
    direct_response: {status: 429, body: {inline_string: %q}}
  - name: impostor
    match: {prefix: /, headers: [{name: x-case, string_match: {exact: impostor}}]}
    route: {cluster: "inbound-vip|80|http/impostor|reviews.default.svc.cluster.local"}
  - name: ok
    match: {prefix: /, headers: [{name: x-case, string_match: {exact: ok}}]}
    route: {cluster: "inbound-vip|8081|http|reviews.default.svc.cluster.local"}
`, directBody))
	m.proxy.Update(s)
	return m
}

// TestGRPCLocalReplies: a gRPC client gets the waypoint's local replies
// as gRPC statuses (trailers-only, as Envoy answers), each with the plain
// reply's text as its message; the record has HTTP 200, the grpc-status
// and the reply's flag.
func TestGRPCLocalReplies(t *testing.T) {
	m := grpcReplyMesh(t)
	cc, err := grpc.NewClient("passthrough:///reviews",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.tunnel(ctx, vipHTTP) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := grpc_testing.NewTestServiceClient(cc)
	for _, tc := range []struct {
		name, xcase string
		empty       bool // EmptyCall rather than UnaryCall
		code        codes.Code
		msg         string
		grpcStatus  string
		flags       string
	}{
		{name: "no healthy upstream", xcase: "empty", code: codes.Unavailable, msg: "no healthy upstream", grpcStatus: "14", flags: "UH"},
		{name: "no route", xcase: "none", code: codes.Unimplemented, msg: "", grpcStatus: "12", flags: "NR"},
		{name: "RBAC denied", xcase: "deny", code: codes.PermissionDenied, msg: "RBAC: access denied", grpcStatus: "7", flags: "RBAC"},
		{name: "route timeout", xcase: "timeout", code: codes.Unavailable, msg: "upstream request timeout", grpcStatus: "14", flags: "UT"},
		{name: "connect failure", xcase: "impostor", code: codes.Unavailable, msg: "upstream connect error or disconnect/reset before headers. reset reason: connection failure", grpcStatus: "14", flags: "UF"},
		{name: "direct response", xcase: "direct", code: codes.Unavailable, msg: directBody, grpcStatus: "14", flags: "-"},
		{name: "fault abort", xcase: "fault", code: codes.ResourceExhausted, msg: "fault filter abort", grpcStatus: "8", flags: "FI"},
		{name: "JWT missing", xcase: "ok", empty: true, code: codes.Unauthenticated, msg: "Jwt is missing", grpcStatus: "16", flags: "-"},
		{name: "served", xcase: "ok", code: codes.OK, msg: "", grpcStatus: "0", flags: "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "x-case", tc.xcase)
			if tc.empty {
				_, err = client.EmptyCall(ctx, &grpc_testing.Empty{})
			} else {
				_, err = client.UnaryCall(ctx, &grpc_testing.SimpleRequest{})
			}
			st, _ := status.FromError(err)
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
			rec := m.obs.next(t)
			if rec.ResponseCode != http.StatusOK || rec.GRPCStatus != tc.grpcStatus || rec.ResponseFlags != tc.flags {
				t.Errorf("record: code %d grpc-status %q flags %q, want 200 %q %q", rec.ResponseCode, rec.GRPCStatus, rec.ResponseFlags, tc.grpcStatus, tc.flags)
			}
		})
	}
}

// TestGRPCLocalReplyShape: the reply to a gRPC request is trailers-only
// (Envoy's): 200, content-type application/grpc, grpc-status and the
// percent-encoded grpc-message in the headers, no content-length, no
// body, no trailers. A request that is not gRPC (plain HTTP/2, gRPC-Web,
// gRPC's content type over HTTP/1.1) gets the plain reply.
func TestGRPCLocalReplyShape(t *testing.T) {
	m := grpcReplyMesh(t)
	h2, h1 := m.h2Client(vipHTTP), m.h1Client(vipHTTP)
	do := func(c *http.Client, contentType, xcase string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://reviews/grpc.testing.TestService/UnaryCall", strings.NewReader(""))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Case", xcase)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, string(b)
	}

	for _, ct := range []string{"application/grpc", "application/grpc+proto"} {
		res, body := do(h2, ct, "direct")
		h := res.Header
		if res.StatusCode != http.StatusOK || h.Get("Content-Type") != "application/grpc" || h.Get("Grpc-Status") != "14" ||
			h.Get("Grpc-Message") != "slow down: 100%25 busy%0A%E2%9C%8B" || body != "" || len(res.Trailer) != 0 {
			t.Errorf("%s: %d %v body %q trailers %v; want a trailers-only UNAVAILABLE", ct, res.StatusCode, h, body, res.Trailer)
		}
		if _, ok := h["Content-Length"]; ok {
			t.Errorf("%s: content-length %q, want none", ct, h["Content-Length"])
		}
		m.obs.next(t)
	}

	for _, tc := range []struct {
		name   string
		c      *http.Client
		ct     string
		xcase  string
		code   int
		body   string
		record int
	}{
		{"HTTP/2", h2, "", "empty", 503, "no healthy upstream", 503},
		{"gRPC-Web", h2, "application/grpc-web", "empty", 503, "no healthy upstream", 503},
		{"HTTP/1.1 with gRPC's content type", h1, "application/grpc", "empty", 503, "no healthy upstream", 503},
		// Envoy answers a gRPC fault abort to a request that is not
		// gRPC with 200 and the abort's text.
		{"HTTP/2 gRPC abort", h2, "", "fault", 200, "fault filter abort", 200},
	} {
		res, body := do(tc.c, tc.ct, tc.xcase)
		if res.StatusCode != tc.code || body != tc.body || res.Header.Get("Content-Type") != "text/plain" || res.Header.Get("Grpc-Status") != "" {
			t.Errorf("%s: %d %q %v, want a plain %d %q", tc.name, res.StatusCode, body, res.Header, tc.code, tc.body)
		}
		if rec := m.obs.next(t); rec.ResponseCode != tc.record || rec.GRPCStatus != "" {
			t.Errorf("%s: record code %d grpc-status %q, want %d and none", tc.name, rec.ResponseCode, rec.GRPCStatus, tc.record)
		}
	}
}

// TestGRPCStatusFor: gRPC's HTTP to gRPC status mapping, as Envoy applies
// it to its local replies.
func TestGRPCStatusFor(t *testing.T) {
	for code, want := range map[int]int{
		400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14,
		200: 2, 302: 2, 413: 2, 418: 2, 431: 2, 500: 2, 501: 2,
	} {
		if got := grpcStatusFor(code); got != want {
			t.Errorf("grpcStatusFor(%d) = %d, want %d", code, got, want)
		}
	}
}

// TestGRPCMessage: grpc-message keeps space to '~' except '%' and
// percent-encodes every other byte, in upper-case hex.
func TestGRPCMessage(t *testing.T) {
	for in, want := range map[string]string{
		"":                    "",
		"no healthy upstream": "no healthy upstream",
		"upstream connect error or disconnect/reset before headers. reset reason: overflow": "upstream connect error or disconnect/reset before headers. reset reason: overflow",
		"100%":       "100%25",
		"a\r\nb\tc":  "a%0D%0Ab%09c",
		"~ !$&}":     "~ !$&}",
		"\x7f\x00":   "%7F%00",
		"ünï ✋":      "%C3%BCn%C3%AF %E2%9C%8B",
		"%25 stays!": "%2525 stays!",
	} {
		if got := grpcMessage(in); got != want {
			t.Errorf("grpcMessage(%q) = %q, want %q", in, got, want)
		}
	}
}
