package config

import (
	"errors"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// FuzzCompileUpstream feeds arbitrary wire bytes as a Cluster and as a
// ClusterLoadAssignment: compilation never panics, every refusal is a
// *NackError, and what compiles keeps the promises the proxy relies on.
func FuzzCompileUpstream(f *testing.F) {
	for _, c := range []*clusterv3.Cluster{parseCluster(f, waypointCluster), parseCluster(f, "name: c\n"+edsCluster+"lb_policy: MAGLEV\n")} {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	la := parseCLA(f, "cluster_name: c\nendpoints:\n- priority: 1\n  lb_endpoints:\n"+endpointYAML("10.0.0.1", 80, ""))
	b, err := proto.Marshal(la)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &clusterv3.Cluster{}
		if proto.Unmarshal(data, c) == nil {
			cc, err := CompileCluster(c)
			var ne *NackError
			switch {
			case err != nil && !errors.As(err, &ne):
				t.Fatalf("refusal is not a *NackError: %v", err)
			case err == nil && (cc.Name == "" || cc.EDSServiceName == "" || cc.ConnectTimeout <= 0 ||
				cc.LB.Kind == upstream.LeastRequest && cc.LB.ChoiceCount < 2 ||
				cc.LB.Kind == upstream.RingHash && (cc.LB.MinimumRingSize == 0 || cc.LB.MinimumRingSize > cc.LB.MaximumRingSize) ||
				cc.LB.Kind == upstream.Maglev && !isPrime(cc.LB.MaglevTableSize)):
				t.Fatalf("compiled an invalid cluster: %+v", cc)
			}
		}
		la := &endpointv3.ClusterLoadAssignment{}
		if proto.Unmarshal(data, la) == nil {
			a, err := CompileAssignment(la)
			var ne *NackError
			if err != nil && !errors.As(err, &ne) {
				t.Fatalf("refusal is not a *NackError: %v", err)
			}
			if err != nil {
				return
			}
			for _, p := range a.Priorities {
				for _, l := range p {
					for _, e := range l.Endpoints {
						if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Weight == 0 || e.Identity == "" {
							t.Fatalf("compiled an invalid endpoint: %+v", e)
						}
					}
				}
			}
		}
	})
}
