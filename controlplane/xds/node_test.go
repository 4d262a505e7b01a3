package xds

import (
	"reflect"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func node(id string, meta map[string]any) *corev3.Node {
	m, err := structpb.NewStruct(meta)
	if err != nil {
		panic(err)
	}
	return &corev3.Node{Id: id, Metadata: m}
}

func TestParseNode(t *testing.T) {
	istio := "ztunnel~10.244.1.7~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local"
	for _, tc := range []struct {
		name string
		in   *corev3.Node
		want NodeInfo
	}{
		{"zmesh", node("ztunnel~node-a", nil),
			NodeInfo{ID: "ztunnel~node-a", Kind: "ztunnel", Node: "node-a"}},
		{"zmesh with metadata", node("ztunnel~node-a", map[string]any{"NODE_NAME": "node-a"}),
			NodeInfo{ID: "ztunnel~node-a", Kind: "ztunnel", Node: "node-a"}},
		{"the agent", node("zmesh-cni-agent~node-b", map[string]any{"NODE_NAME": "node-b"}),
			NodeInfo{ID: "zmesh-cni-agent~node-b", Kind: "zmesh-cni-agent", Node: "node-b"}},
		{"istio with metadata", node(istio, map[string]any{
			"NAME": "ztunnel-x7k2p", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.244.1.7,fd00::7",
			"NODE_NAME": "worker-1", "CLUSTER_ID": "Kubernetes"}),
			NodeInfo{ID: istio, Kind: "ztunnel", Node: "worker-1", Pod: "ztunnel-x7k2p", Namespace: "istio-system",
				IPs: []string{"10.244.1.7", "fd00::7"}, Cluster: "Kubernetes"}},
		{"istio, id only", node(istio, nil),
			NodeInfo{ID: istio, Kind: "ztunnel", Pod: "ztunnel-x7k2p", Namespace: "istio-system", IPs: []string{"10.244.1.7"}}},
		{"istio, a pod name with dots", node("ztunnel~10.0.0.1~zt.a.b.ns1~ns1.svc.cluster.local", nil),
			NodeInfo{ID: "ztunnel~10.0.0.1~zt.a.b.ns1~ns1.svc.cluster.local", Kind: "ztunnel", Pod: "zt.a.b", Namespace: "ns1", IPs: []string{"10.0.0.1"}}},
		{"istio sidecar", node("sidecar~10.0.0.2~web-1.shop~shop.svc.cluster.local", map[string]any{"NODE_NAME": "n3"}),
			NodeInfo{ID: "sidecar~10.0.0.2~web-1.shop~shop.svc.cluster.local", Kind: "sidecar", Node: "n3", Pod: "web-1", Namespace: "shop", IPs: []string{"10.0.0.2"}}},
		{"pod and namespace that disagree", node("ztunnel~10.0.0.1~zt.ns1~ns2.svc.cluster.local", nil),
			NodeInfo{ID: "ztunnel~10.0.0.1~zt.ns1~ns2.svc.cluster.local", Kind: "ztunnel", IPs: []string{"10.0.0.1"}}},
		{"no tilde", node("just-a-name", map[string]any{"NODE_NAME": "n"}),
			NodeInfo{ID: "just-a-name", Node: "n"}},
		{"empty node field", node("ztunnel~", map[string]any{"NODE_NAME": "n"}),
			NodeInfo{ID: "ztunnel~", Kind: "ztunnel", Node: "n"}},
		{"nil", nil, NodeInfo{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseNode(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseNode = %+v\nwant        %+v", got, tc.want)
			}
		})
	}
}

// A proxy cannot make the server hold more than a bounded node, however
// much it sends.
func TestParseNodeIsBounded(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	ips := strings.TrimSuffix(strings.Repeat("10.0.0.1,", 1000), ",")
	got := ParseNode(node("ztunnel~"+big, map[string]any{"NAME": big, "INSTANCE_IPS": ips, "OTHER": big}))
	if len(got.ID) > maxNodeField || len(got.Pod) > maxNodeField || len(got.Node) > maxNodeField || len(got.IPs) > maxNodeIPs {
		t.Errorf("node kept: id %d bytes, pod %d, node %d, %d IPs", len(got.ID), len(got.Pod), len(got.Node), len(got.IPs))
	}
}
