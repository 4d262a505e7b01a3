// Package model is the control plane's view of the mesh: the Kubernetes,
// Istio and Gateway API objects that translation reads, in the projects' own
// Go types, whichever source (API server or a directory of YAML) they came
// from. It holds no logic beyond keeping snapshots immutable and telling
// sources apart.
package model

import (
	"cmp"
	"slices"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Mesh is the mesh-wide configuration translation needs.
type Mesh struct {
	// TrustDomain of every workload identity, e.g. "cluster.local".
	TrustDomain string
	// RootNamespace holds mesh-wide policy (PeerAuthentication without a
	// selector there applies everywhere), e.g. "istio-system".
	RootNamespace string
	// ClusterID prefixes workload uids, e.g. "Kubernetes".
	ClusterID string
	// Network names the network of every workload; empty for one flat
	// network.
	Network string
	// DomainSuffix of service hostnames, e.g. "cluster.local".
	DomainSuffix string
}

// DefaultMesh is what Istio uses when nothing says otherwise.
func DefaultMesh() Mesh {
	return Mesh{TrustDomain: "cluster.local", RootNamespace: "istio-system", ClusterID: "Kubernetes", DomainSuffix: "cluster.local"}
}

// Snapshot is every object of the kinds translation reads, at one moment.
// A snapshot is never modified once a source has published it: sources
// build a new one for each change. Each list is sorted by namespace/name.
type Snapshot struct {
	Namespaces            []*corev1.Namespace
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	ServiceEntries        []*networkingv1.ServiceEntry
	PeerAuthentications   []*securityv1.PeerAuthentication
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	GatewayClasses        []*gatewayv1.GatewayClass
	Gateways              []*gatewayv1.Gateway

	// The L7 kinds: read and kept for the waypoint, which is not built yet;
	// the L4 translation does not use them.
	RequestAuthentications []*securityv1.RequestAuthentication
	VirtualServices        []*networkingv1.VirtualService
	DestinationRules       []*networkingv1.DestinationRule
	IstioGateways          []*networkingv1.Gateway
	HTTPRoutes             []*gatewayv1.HTTPRoute
	GRPCRoutes             []*gatewayv1.GRPCRoute

	// Nodes give workloads and waypoints their locality (topology
	// labels); only the waypoint's configuration reads them.
	Nodes []*corev1.Node

	// ConfigMaps are read from a directory only, for what plays the
	// waypoint deployer without a cluster: a waypoint Gateway's
	// spec.infrastructure.parametersRef names one. Translation does not
	// read them, and the Kubernetes source leaves them out (the deployer
	// reads the one it needs from the API server).
	ConfigMaps []*corev1.ConfigMap
}

// Object is what every listed type is.
type Object interface {
	GetNamespace() string
	GetName() string
}

// SortByName sorts objects by namespace, then name.
func SortByName[T Object](objs []T) {
	slices.SortFunc(objs, func(a, b T) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
}

// Sort sorts every list of s by namespace/name.
func (s *Snapshot) Sort() {
	SortByName(s.Namespaces)
	SortByName(s.Pods)
	SortByName(s.Services)
	SortByName(s.ServiceEntries)
	SortByName(s.PeerAuthentications)
	SortByName(s.AuthorizationPolicies)
	SortByName(s.GatewayClasses)
	SortByName(s.Gateways)
	SortByName(s.RequestAuthentications)
	SortByName(s.VirtualServices)
	SortByName(s.DestinationRules)
	SortByName(s.IstioGateways)
	SortByName(s.HTTPRoutes)
	SortByName(s.GRPCRoutes)
	SortByName(s.Nodes)
	SortByName(s.ConfigMaps)
}

// Node returns the node named name, or nil.
func (s *Snapshot) Node(name string) *corev1.Node {
	i, ok := slices.BinarySearchFunc(s.Nodes, name, func(n *corev1.Node, name string) int {
		return cmp.Compare(n.Name, name)
	})
	if !ok {
		return nil
	}
	return s.Nodes[i]
}

// Namespace returns the namespace named name, or nil.
func (s *Snapshot) Namespace(name string) *corev1.Namespace {
	i, ok := slices.BinarySearchFunc(s.Namespaces, name, func(n *corev1.Namespace, name string) int {
		return cmp.Compare(n.Name, name)
	})
	if !ok {
		return nil
	}
	return s.Namespaces[i]
}
