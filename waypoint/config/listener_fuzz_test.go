package config

import (
	"errors"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/internal/testutil"
)

// FuzzCompileListener feeds arbitrary wire bytes as a Listener:
// compilation never panics, every refusal is a *NackError, and what
// compiles keeps the promises the proxy relies on (each chain complete
// for its protocol, the route names exactly those the chains use).
func FuzzCompileListener(f *testing.F) {
	b, err := proto.Marshal(testutil.ProtoYAML(f, istioListener(), &listenerv3.Listener{}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &listenerv3.Listener{}
		if proto.Unmarshal(data, l) != nil {
			return
		}
		chains, routes, err := CompileListener(l)
		var ne *NackError
		if err != nil {
			if !errors.As(err, &ne) {
				t.Fatalf("refusal is not a *NackError: %v", err)
			}
			return
		}
		used := map[string]bool{}
		for d, c := range chains {
			if !d.IsValid() || d.Port() == 0 || d.Addr().Is4In6() || c.Name == "" || c.StatPrefix == "" {
				t.Fatalf("destination %v: invalid chain %+v", d, c)
			}
			http := c.Protocol == ChainHTTP || c.Protocol == ChainSniff
			tcp := c.Protocol == ChainTCP || c.Protocol == ChainSniff
			if http != (c.RouteConfig != "") || tcp != (c.TCPCluster != "") || !http && len(c.HTTPFilters) > 0 {
				t.Fatalf("destination %v: chain %+v is incomplete for its protocol", d, c)
			}
			for _, hf := range c.HTTPFilters {
				if (hf.RBAC == nil) == (hf.Fault == nil) {
					t.Fatalf("destination %v: filter %+v has not exactly one configuration", d, hf)
				}
			}
			if http {
				used[c.RouteConfig] = true
			}
		}
		if len(used) != len(routes) || !slices.IsSorted(routes) {
			t.Fatalf("routes %q, chains use %v", routes, used)
		}
		for _, r := range routes {
			if !used[r] {
				t.Fatalf("route %q listed but no chain uses it", r)
			}
		}
	})
}
