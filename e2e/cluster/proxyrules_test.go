package cluster

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeRules(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	ep := func(node string, ready *bool, addrs ...string) discoveryv1.Endpoint {
		e := discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
		if node != "" {
			e.NodeName = new(node)
		}
		return e
	}
	slice := func(ns, svc string, typ discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: typ, Ports: ports, Endpoints: eps,
		}
	}
	port := func(name string, proto corev1.Protocol, n int32) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: new(name), Protocol: new(proto), Port: new(n)}
	}
	ap := netip.MustParseAddrPort

	dns := svc("kube-system", "kube-dns", "10.96.0.10", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	dns.Spec.InternalTrafficPolicy = &local
	svcs := []*corev1.Service{
		svc("a", "web", "10.96.1.1",
			corev1.ServicePort{Name: "http", Port: 80}, // protocol defaults to TCP
			corev1.ServicePort{Name: "grpc", Port: 9090, Protocol: corev1.ProtocolTCP},
			corev1.ServicePort{Name: "sctp", Port: 7, Protocol: corev1.ProtocolSCTP}),
		svc("a", "headless", "None", corev1.ServicePort{Name: "http", Port: 80}),
		svc("a", "external", "", corev1.ServicePort{Name: "http", Port: 80}),
		svc("a", "empty", "10.96.1.2", corev1.ServicePort{Port: 8080}),
		dns,
	}
	eps := []*discoveryv1.EndpointSlice{
		slice("a", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080), port("grpc", corev1.ProtocolUDP, 9999)},
			ep("node-2", nil, "10.50.2.5"), // Ready unset counts as ready
			ep("node-1", new(true), "10.50.1.5"),
			ep("node-1", new(false), "10.50.1.6")), // not ready: left out
		// A second slice of the same Service: its grpc port is TCP, and
		// an endpoint already listed is not listed twice.
		slice("a", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080), port("grpc", corev1.ProtocolTCP, 9091)},
			ep("node-2", nil, "10.50.2.5"), ep("node-2", nil, "10.50.2.7")),
		slice("a", "web", discoveryv1.AddressTypeIPv6,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}, ep("node-1", nil, "fd00::1")),
		// Same name in another namespace: not web's.
		slice("b", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}, ep("node-1", nil, "10.50.1.99")),
		slice("kube-system", "kube-dns", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("dns", corev1.ProtocolUDP, 53)},
			ep("node-1", nil, "10.44.0.2"), ep("node-2", nil, "10.44.0.3")),
	}
	want := []svcPort{
		{Name: "kube-system/kube-dns:dns", VIP: ap("10.96.0.10:53"), Proto: corev1.ProtocolUDP, Endpoints: []netip.AddrPort{ap("10.44.0.2:53")}},
		{Name: "a/web:http", VIP: ap("10.96.1.1:80"), Proto: corev1.ProtocolTCP,
			Endpoints: []netip.AddrPort{ap("10.50.1.5:8080"), ap("10.50.2.5:8080"), ap("10.50.2.7:8080")}},
		{Name: "a/web:grpc", VIP: ap("10.96.1.1:9090"), Proto: corev1.ProtocolTCP,
			Endpoints: []netip.AddrPort{ap("10.50.2.5:9091"), ap("10.50.2.7:9091")}},
		{Name: "a/empty:8080", VIP: ap("10.96.1.2:8080"), Proto: corev1.ProtocolTCP},
	}
	if got := nodeRules("node-1", svcs, eps); !reflect.DeepEqual(got, want) {
		t.Errorf("node-1:\n got %+v\nwant %+v", got, want)
	}
	// Local policy: node-2 sends DNS to its own server only.
	got := nodeRules("node-2", svcs, eps)
	if len(got) == 0 || !reflect.DeepEqual(got[0].Endpoints, []netip.AddrPort{ap("10.44.0.3:53")}) {
		t.Errorf("node-2 kube-dns = %+v, want only 10.44.0.3:53", got)
	}
}
