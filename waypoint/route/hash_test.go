package route_test

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/zmesh/zmesh/waypoint/config"

	"github.com/zmesh/zmesh/waypoint/route"
)

// hashRoutes compiles a route configuration whose single route has the
// given hash_policy (YAML list items indented for the route action).
func hashRoutes(t testing.TB, policies string) []route.HashPolicy {
	t.Helper()
	table := compileYAML(t, []byte(`name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route:
      cluster: c
      hash_policy:
`+policies))
	d := route.Decide(table, route.Request{Authority: "svc", Method: "GET", Path: "/"})
	if d.Action != route.ActionForward {
		t.Fatalf("route not forwarded: %v", d.Action)
	}
	return d.Route.Forward.HashPolicies
}

func rotl(h uint64) uint64 { return h<<1 | h>>63 }

func TestRequestHash(t *testing.T) {
	x := xxhash.Sum64String
	client := netip.MustParseAddr("10.1.2.3")
	// XXH64 with seed 0, Envoy's hash: its published test vectors.
	if x("") != 0xef46db3751d8e999 || x("abc") != 0x44bc2cf5ad770999 {
		t.Fatal("not XXH64 with seed 0: the hash function changed, and with it every sticky session")
	}
	genValue := "43bc2967acb25af4" // hex xxHash64("10.1.2.3"), the generated cookie
	twoValues := func() uint64 {   // "a" then "b", each seeding the next
		d := xxhash.NewWithSeed(0)
		d.WriteString("a")
		s := d.Sum64()
		d = xxhash.NewWithSeed(s)
		d.WriteString("b")
		return d.Sum64()
	}()
	for _, tc := range []struct {
		name      string
		policies  string
		path      string
		header    http.Header
		client    netip.Addr
		want      uint64
		ok        bool
		setCookie string
	}{
		{name: "header", policies: "      - header: {header_name: End-User}\n",
			header: http.Header{"End-User": {"jason"}}, want: x("jason"), ok: true},
		{name: "header absent", policies: "      - header: {header_name: end-user}\n", ok: false},
		{name: "header values in any order", policies: "      - header: {header_name: x-v}\n",
			header: http.Header{"X-V": {"b", "a"}}, want: twoValues, ok: true},
		{name: "authority pseudo-header", policies: "      - header: {header_name: \":authority\"}\n",
			want: x("svc"), ok: true},
		{name: "cookie present", policies: "      - cookie: {name: user, ttl: 10s, path: /}\n",
			header: http.Header{"Cookie": {"a=1; user=\"u-42\"; b=2"}}, want: x("u-42"), ok: true},
		{name: "cookie in a second Cookie header", policies: "      - cookie: {name: user}\n",
			header: http.Header{"Cookie": {"a=1", "user=u-7"}}, want: x("u-7"), ok: true},
		{name: "cookie absent, no ttl: no hash", policies: "      - cookie: {name: user}\n",
			header: http.Header{"Cookie": {"username=x"}}, ok: false},
		{name: "cookie absent, ttl: generated and set", policies: "      - cookie: {name: user, ttl: 3600s, path: /api}\n",
			want: x(genValue), ok: true, setCookie: `user="` + genValue + `"; Max-Age=3600; Path=/api; HttpOnly`},
		{name: "cookie absent, ttl 0: session cookie", policies: "      - cookie: {name: user, ttl: 0s}\n",
			want: x(genValue), ok: true, setCookie: `user="` + genValue + `"; HttpOnly`},
		{name: "source ip", policies: "      - connection_properties: {source_ip: true}\n",
			want: x("10.1.2.3"), ok: true},
		{name: "source ip, IPv4-mapped client", policies: "      - connection_properties: {source_ip: true}\n",
			client: netip.MustParseAddr("::ffff:10.1.2.3"), want: x("10.1.2.3"), ok: true},
		{name: "source ip, no client", policies: "      - connection_properties: {source_ip: true}\n",
			client: netip.Addr{}, ok: false},
		{name: "query parameter, first occurrence, undecoded", policies: "      - query_parameter: {name: user}\n",
			path: "/p?x=1&user=a%20b&user=c", want: x("a%20b"), ok: true},
		{name: "query parameter without value", policies: "      - query_parameter: {name: user}\n",
			path: "/p?user", want: x(""), ok: true},
		{name: "query parameter absent", policies: "      - query_parameter: {name: user}\n",
			path: "/p?username=1", ok: false},
		// Several policies: rotate the hash so far left by one, xor the next.
		{name: "header then query combined", policies: "      - header: {header_name: end-user}\n      - query_parameter: {name: q}\n",
			path: "/?q=v", header: http.Header{"End-User": {"jason"}}, want: rotl(x("jason")) ^ x("v"), ok: true},
		{name: "same policy twice does not cancel", policies: "      - header: {header_name: end-user}\n      - header: {header_name: end-user}\n",
			header: http.Header{"End-User": {"jason"}}, want: rotl(x("jason")) ^ x("jason"), ok: true},
		{name: "first yields nothing: the second alone", policies: "      - header: {header_name: end-user}\n      - query_parameter: {name: q}\n",
			path: "/?q=v", want: x("v"), ok: true},
		{name: "terminal with a hash stops", policies: "      - header: {header_name: end-user}\n        terminal: true\n      - connection_properties: {source_ip: true}\n",
			header: http.Header{"End-User": {"jason"}}, want: x("jason"), ok: true},
		{name: "terminal without a hash goes on", policies: "      - header: {header_name: end-user}\n        terminal: true\n      - connection_properties: {source_ip: true}\n",
			want: x("10.1.2.3"), ok: true},
		{name: "terminal cookie generated stops", policies: "      - cookie: {name: s, ttl: 60s}\n        terminal: true\n      - connection_properties: {source_ip: true}\n",
			want: x(genValue), ok: true, setCookie: `s="` + genValue + `"; Max-Age=60; HttpOnly`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := hashRoutes(t, tc.policies)
			path := tc.path
			if path == "" {
				path = "/"
			}
			h := tc.header
			if h == nil {
				h = http.Header{}
			}
			c := client
			if tc.client != (netip.Addr{}) || tc.name == "source ip, no client" {
				c = tc.client
			}
			req := route.Request{Authority: "svc", Method: "GET", Path: path, Header: h}
			got, ok, setCookie := route.RequestHash(ps, &req, c)
			if ok != tc.ok || ok && got != tc.want || setCookie != tc.setCookie {
				t.Errorf("RequestHash = %#x, %v, %q; want %#x, %v, %q", got, ok, setCookie, tc.want, tc.ok, tc.setCookie)
			}
		})
	}
}

func TestRequestHashAllocations(t *testing.T) {
	ps := hashRoutes(t, "      - header: {header_name: end-user}\n      - cookie: {name: user, ttl: 10s}\n      - connection_properties: {source_ip: true}\n      - query_parameter: {name: q}\n")
	req := route.Request{Authority: "svc", Method: "GET", Path: "/?q=1",
		Header: http.Header{"End-User": {"a", "b", "c"}, "Cookie": {"x=1; user=abc"}}}
	client := netip.MustParseAddr("2001:db8::1")
	if n := testing.AllocsPerRun(100, func() { route.RequestHash(ps, &req, client) }); n != 0 {
		t.Fatalf("RequestHash allocates %.0f times per request, want 0", n)
	}
}

// FuzzHashPolicy compiles arbitrary hash_policy lists (protojson) and
// hashes requests with arbitrary header, cookie and query values (they come
// from peers): no panic, the same request always gets the same hash, and a
// generated Set-Cookie never carries a control character or a second
// cookie.
func FuzzHashPolicy(f *testing.F) {
	f.Add(`[{"header":{"header_name":"end-user"}},{"cookie":{"name":"s","ttl":"10s","path":"/"},"terminal":true}]`, "jason", "s=1; t=2", "/?q=%20&q=2")
	f.Add(`[{"query_parameter":{"name":"q"}},{"connection_properties":{"source_ip":true}}]`, "", "", "/?q")
	f.Fuzz(func(t *testing.T, policies, header, cookie, path string) {
		rc := &routev3.RouteConfiguration{}
		js := `{"virtual_hosts":[{"name":"a","domains":["*"],"routes":[{"match":{"prefix":""},"route":{"cluster":"c","hash_policy":` + policies + `}}]}]}`
		if protojson.Unmarshal([]byte(js), rc) != nil {
			return
		}
		table, err := config.CompileRoutes(rc)
		if err != nil {
			return
		}
		req := route.Request{Authority: "svc", Method: "GET", Path: path,
			Header: http.Header{"End-User": {header, cookie}, "Cookie": {cookie}}}
		d := route.Decide(table, req)
		if d.Route == nil || d.Route.Forward == nil {
			return
		}
		client := netip.MustParseAddr("10.0.0.1")
		h1, ok1, c1 := route.RequestHash(d.Route.Forward.HashPolicies, &req, client)
		req.Header["End-User"] = []string{cookie, header}
		h2, ok2, c2 := route.RequestHash(d.Route.Forward.HashPolicies, &req, client)
		if h1 != h2 || ok1 != ok2 || c1 != c2 {
			t.Fatalf("same request hashed twice: %#x %v %q, then %#x %v %q", h1, ok1, c1, h2, ok2, c2)
		}
		if strings.ContainsAny(c1, "\r\n\x00") || strings.Count(c1, ";") > 3 {
			t.Fatalf("unsafe Set-Cookie %q", c1)
		}
	})
}

func BenchmarkRequestHash(b *testing.B) {
	ps := hashRoutes(b, "      - header: {header_name: end-user}\n      - connection_properties: {source_ip: true}\n")
	req := route.Request{Authority: "svc", Method: "GET", Path: "/", Header: http.Header{"End-User": {"jason"}}}
	client := netip.MustParseAddr("10.1.2.3")
	b.ReportAllocs()
	for b.Loop() {
		route.RequestHash(ps, &req, client)
	}
}
