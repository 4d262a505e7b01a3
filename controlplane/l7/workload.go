package l7

import (
	"fmt"
	"math"
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/translate"
)

// A waypoint whose istio.io/waypoint-for is workload or all also serves
// the pods bound to it (istio.io/use-waypoint on the pod, else on its
// namespace). A client's ztunnel sends it what the client sent to such a
// pod's address, with the pod's IP:port as the tunnel's :authority. Each
// TCP container port of the pod gets a chain matched on that address,
// named inbound-pod|<port>|http|<pod>.<namespace> (tcp for a TCP port,
// both for a sniffed one), whose routes, or TCP proxy, send everything to
// a cluster of that one pod and port, its original destination, over
// HBONE with the pod's identity. The protocol is that of a Service port
// of the pod's namespace selecting the pod and targeting the container
// port, else the container port's name, else sniffed. Routing objects do
// not apply (they name services); RequestAuthentications and
// AuthorizationPolicies attached to the waypoint's Gateway (or
// GatewayClass) do, as on its Service chains. A port the pod does not
// declare has no chain: the waypoint refuses tunnels to it.

// workloadInfo is a pod bound to the waypoint.
type workloadInfo struct {
	pod *corev1.Pod
	ref ObjectRef
	// host names the pod in chain and cluster names, <pod>.<namespace>;
	// it is also its key for AuthorizationPolicies, which no Service host
	// equals.
	host  string
	ip    netip.Addr
	ports []servicePort
}

// workloads builds the chains' clusters and routes of every pod bound to
// the waypoint.
func (b *builder) workloads() {
	for _, p := range b.snap.Pods {
		if p == nil || !b.podBoundTo(p) || !running(p) {
			continue
		}
		ref := ObjectRef{"Pod", p.Namespace, p.Name}
		if !translate.InMesh(p, b.snap.Namespace(p.Namespace), b.opts.RequireRedirectionAnnotation) {
			b.problem(ref, "metadata.labels["+model.LabelUseWaypoint+"]", "the pod is not enrolled in the mesh; the waypoint cannot reach it")
			continue
		}
		ip, ok := podIP(p)
		if !ok {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		id, err := spiffeid.FromSegments(b.trustDomain(), "ns", p.Namespace, "sa", sa)
		if err != nil {
			b.problem(ref, "spec.serviceAccountName", fmt.Sprintf("cannot form a SPIFFE identity (%v); not served", err))
			continue
		}
		w := &workloadInfo{pod: p, ref: ref, host: p.Name + "." + p.Namespace, ip: ip}
		pe := podEndpoint{pod: p, ip: ip, identity: id.String(), locality: PodLocality(p, b.snap.Node(p.Spec.NodeName))}
		pe.workload, pe.canonicalService, pe.canonicalRevision = translate.WorkloadNames(p)
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if (cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP) || cp.ContainerPort < 1 || cp.ContainerPort > math.MaxUint16 {
					continue
				}
				if w.hasPort(cp.ContainerPort) {
					continue
				}
				sp := b.workloadPort(p, cp)
				w.ports = append(w.ports, sp)
				b.workloadCluster(w, sp, pe)
				if sp.sniffed {
					tcp := sp
					tcp.protocol, tcp.http2 = "tcp", false
					b.workloadCluster(w, tcp, pe)
				}
				if sp.protocol == "http" {
					b.workloadRoutes(w, sp)
				}
			}
		}
		if len(w.ports) == 0 {
			b.problem(ref, "spec.containers[*].ports", "no TCP container port: the waypoint serves a workload's declared ports only, and refuses traffic to it")
			continue
		}
		b.pods = append(b.pods, w)
	}
}

func (w *workloadInfo) hasPort(port int32) bool {
	for _, p := range w.ports {
		if p.port == port {
			return true
		}
	}
	return false
}

// podBoundTo reports whether pod p is bound to this waypoint: by its own
// istio.io/use-waypoint label, else by its namespace's. The waypoint's own
// pods never are.
func (b *builder) podBoundTo(p *corev1.Pod) bool {
	if p.Labels[model.LabelGatewayName] != "" {
		return false
	}
	ns, name, labelled := model.UseWaypoint(p.Labels, p.Namespace)
	if !labelled {
		nsObj := b.snap.Namespace(p.Namespace)
		if nsObj == nil {
			return false
		}
		ns, name, _ = model.UseWaypoint(nsObj.Labels, p.Namespace)
	}
	return name != "" && ns == b.gw.Namespace && name == b.gw.Name
}

// workloadPort is a container port as a chain port: the protocol of a
// Service port that selects the pod and targets it (by number or name),
// else of the container port's name.
func (b *builder) workloadPort(p *corev1.Pod, cp corev1.ContainerPort) servicePort {
	for _, svc := range b.snap.Services {
		if svc.Namespace != p.Namespace || len(svc.Spec.Selector) == 0 || !selects(svc.Spec.Selector, p.Labels) {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			target := sp.TargetPort.IntVal
			if sp.TargetPort.StrVal != "" {
				if sp.TargetPort.StrVal != cp.Name {
					continue
				}
				target = cp.ContainerPort
			} else if target == 0 {
				target = sp.Port
			}
			if target != cp.ContainerPort {
				continue
			}
			if out, ok := portOf(sp); ok {
				out.name, out.port, out.targetPort = cp.Name, cp.ContainerPort, intOrName{num: cp.ContainerPort}
				return out
			}
		}
	}
	out, _ := portOf(corev1.ServicePort{Name: cp.Name, Port: cp.ContainerPort})
	return out
}

// workloadClusterName names the cluster, chain and routes of one pod port.
func workloadClusterName(port int32, protocol, host string) string {
	return fmt.Sprintf("inbound-pod|%d|%s|%s", port, protocol, host)
}

// workloadCluster builds the cluster of one pod port and its assignment:
// the pod itself, its original destination.
func (b *builder) workloadCluster(w *workloadInfo, sp servicePort, pe podEndpoint) {
	name := workloadClusterName(sp.port, sp.protocol, w.host)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
			InitialFetchTimeout:   durationpb.New(0),
		}},
		ConnectTimeout: durationpb.New(defaultConnectTimeout),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
			MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
			MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
			MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
			TrackRemaining:     true,
		}}},
	}
	if sp.protocol == "http" && sp.http2 {
		c.TypedExtensionProtocolOptions = httpOptions(nil, true, false, nil)
	}
	b.out.Clusters = append(b.out.Clusters, c)
	b.out.Endpoints = append(b.out.Endpoints, &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality: pe.locality,
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       pe.ip.String(),
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(sp.port)},
					}}},
				}},
				HealthStatus: corev3.HealthStatus_HEALTHY,
				Metadata:     b.endpointMetadata(pe),
			}},
		}},
	})
}

// workloadRoutes is the route configuration of one HTTP (or sniffed) pod
// port: every request to the pod, with istiod's default retries (on the
// same pod: it is the only one) and no timeout.
func (b *builder) workloadRoutes(w *workloadInfo, sp servicePort) {
	name := workloadClusterName(sp.port, "http", w.host)
	b.out.Routes = append(b.out.Routes, &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    fmt.Sprintf("%s:%d", w.host, sp.port),
			Domains: []string{"*"},
			// As istiod: upstream requests carry x-envoy-attempt-count.
			IncludeRequestAttemptCount: true,
			Routes: []*routev3.Route{{
				Name:  "default",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
					Timeout:          durationpb.New(0),
					RetryPolicy:      defaultRetryPolicy(true),
				}},
				Decorator: &routev3.Decorator{Operation: fmt.Sprintf("%s:%d/*", w.host, sp.port)},
			}},
		}},
		ValidateClusters: wrapperspb.Bool(false),
	})
}

// workloadChains are the filter chains of the bound pods' ports, matched
// on the pod's address and the port, with the RequestAuthentications and
// AuthorizationPolicies that apply to every chain of the waypoint (its
// Gateway's, its GatewayClass's): a client that dials the pod's address
// instead of a Service's meets the same token checks as through the
// Service, so an invalid token is refused and requestPrincipals read a
// verified token, never a header the client wrote. sniffing is set when
// one sniffs.
func (b *builder) workloadChains(claimed map[netip.AddrPort]string, sniffing *bool) []*listenerv3.FilterChain {
	var chains []*listenerv3.FilterChain
	for _, w := range b.pods {
		addr := []*corev3.CidrRange{{AddressPrefix: w.ip.String(), PrefixLen: wrapperspb.UInt32(uint32(w.ip.BitLen()))}}
		for _, p := range w.ports {
			name := workloadClusterName(p.port, p.protocol, w.host)
			if addr := b.claim(claimed, w.ref, name, p.port, addr); len(addr) == 0 {
				continue
			}
			if p.protocol == "http" {
				var alpn []string
				if p.sniffed {
					alpn, *sniffing = sniffedProtocols, true
				}
				chains = append(chains, filterChain(name, p.port, addr, alpn, b.headed(b.hcm(name, append(b.jwtFilters(w.host), b.authzFilters(w.host)...)))...))
			}
			if p.protocol == "tcp" || p.sniffed {
				tcpName := workloadClusterName(p.port, "tcp", w.host)
				filters := b.headed(append(b.authzTCPFilters(w.host), network(tcpProxyName, &tcpproxyv3.TcpProxy{
					StatPrefix:       tcpName,
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: tcpName},
				}))...)
				chains = append(chains, filterChain(tcpName, p.port, addr, nil, filters...))
			}
		}
	}
	return chains
}
