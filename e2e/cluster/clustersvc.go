package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// apiServerFrontPort is where each node reaches the API server (the
// kubernetes Service's endpoints), as a cluster's nodes reach their
// control plane's address.
const apiServerFrontPort = 6443

// managedBy marks the EndpointSlices the harness writes, as a cluster's
// control plane would, so that no controller takes them.
const managedBy = "zmesh-e2e-harness"

// clusterServices makes the Services a cluster has before anything is
// installed, with the endpoints its control plane would give them:
// kube-dns at KubeDNSAddr backed by every node's DNS server (each node's
// pods use their own node's: internalTrafficPolicy Local), and the
// kubernetes Service backed by each node's front of the API server, which
// runs on the root namespace's loopback and is reached from the node's
// host namespace through a forwarder at the node's address (the API
// server sees the forwarder, not the client, as behind a cloud's load
// balancer).
func (c *Cluster) clusterServices(ctx context.Context) error {
	u, err := url.Parse(c.Env.APIServer)
	if err != nil {
		return fmt.Errorf("API server URL: %w", err)
	}
	var dnsEps, apiEps []discoveryv1.Endpoint
	for _, n := range c.Nodes {
		f, err := netenv.Forward(n.Host, netip.AddrPortFrom(n.Addr, apiServerFrontPort), u.Host)
		if err != nil {
			return fmt.Errorf("%s: API server front: %w", n.Name, err)
		}
		n.forward = f
		ep := discoveryv1.Endpoint{Addresses: []string{n.Addr.String()}, NodeName: new(n.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: new(true)}}
		dnsEps, apiEps = append(dnsEps, ep), append(apiEps, ep)
	}
	// kube-dns's address is reserved as a cluster's is, before anything
	// else may take it.
	local := corev1.ServiceInternalTrafficPolicyLocal
	dnsSvc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{ClusterIP: KubeDNSAddr.String(), InternalTrafficPolicy: &local,
			Ports: []corev1.ServicePort{{Name: "dns", Port: dnsPort, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(dnsPort)}}},
	}
	if _, err := c.Env.Client.CoreV1().Services("kube-system").Create(ctx, dnsSvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kube-dns Service: %w", err)
	}
	for _, sl := range []*discoveryv1.EndpointSlice{
		endpointSlice("kube-system", "kube-dns", "dns", corev1.ProtocolUDP, dnsPort, dnsEps),
		endpointSlice("default", "kubernetes", "https", corev1.ProtocolTCP, apiServerFrontPort, apiEps),
	} {
		if _, err := c.Env.Client.DiscoveryV1().EndpointSlices(sl.Namespace).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("EndpointSlice %s/%s: %w", sl.Namespace, sl.Name, err)
		}
	}
	return nil
}

func endpointSlice(ns, svc, port string, proto corev1.Protocol, num int32, eps []discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-harness", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: managedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: new(port), Protocol: new(proto), Port: new(num)}},
	}
}
