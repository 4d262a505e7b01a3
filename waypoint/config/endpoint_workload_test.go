package config

import (
	"testing"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// TestEndpointWorkloadMetadata: the "istio" metadata of an endpoint names
// its workload for telemetry (istiod's workload string, zmeshd's app and
// version); other keys are left alone, and a known key of the wrong shape
// is refused with its path.
func TestEndpointWorkloadMetadata(t *testing.T) {
	cla := func(istio string) string {
		return "cluster_name: c\nendpoints:\n- lb_endpoints:\n    - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}\n" +
			"      metadata: {filter_metadata: {zmesh: {identity: \"spiffe://td/ns/a/sa/b\"}, istio: " + istio + "}}\n"
	}
	a, err := CompileAssignment(parseCLA(t, cla(`{workload: "reviews-v2;shop;reviews;v2;east", app: reviews, version: v2, other: 1}`)))
	if err != nil {
		t.Fatal(err)
	}
	want := upstream.WorkloadInfo{Name: "reviews-v2", Namespace: "shop", CanonicalService: "reviews", CanonicalRevision: "v2",
		Cluster: "east", App: "reviews", Version: "v2"}
	if got := a.Priorities[0][0].Endpoints[0].Workload; got != want {
		t.Errorf("workload %+v, want %+v", got, want)
	}
	const p = `endpoints "c": endpoints[0].lb_endpoints[0].metadata.filter_metadata["istio"]`
	for _, tc := range []struct{ name, istio, want string }{
		{"workload not a string", `{workload: 1}`, p + `.workload: must be a string`},
		{"workload of 3 parts", `{workload: "a;b;c"}`, p + `.workload: "a;b;c": want <workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`},
		{"app not a string", `{app: {x: y}}`, p + `.app: must be a string`},
		{"version not a string", `{version: [v1]}`, p + `.version: must be a string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileAssignment(parseCLA(t, cla(tc.istio)))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v, want %s", err, tc.want)
			}
		})
	}
}
