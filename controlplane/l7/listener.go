package l7

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
)

// Names of the listener and of the filters it uses, as Envoy and istiod
// spell them.
const (
	listenerName      = "main_internal"
	hboneListenPort   = 15008
	httpInspectorName = "envoy.filters.listener.http_inspector"
	hcmName           = "envoy.filters.network.http_connection_manager"
	tcpProxyName      = "envoy.filters.network.tcp_proxy"
	routerName        = "envoy.filters.http.router"
	faultName         = "envoy.filters.http.fault"
	corsName          = "envoy.filters.http.cors"
)

// sniffedProtocols are what the HTTP inspector reports for HTTP: a sniffed
// port's HTTP chain matches them, its TCP chain the rest.
var sniffedProtocols = []string{"http/1.0", "http/1.1", "h2c"}

// listener builds main_internal: for every port of every bound Service
// with a VIP, an HTTP chain (HTTP ports), a TCP chain (TCP ports) or both
// (sniffed ports), matched on the VIPs and the port.
func (b *builder) listener() {
	var chains []*listenerv3.FilterChain
	sniffing := false
	claimed := map[netip.AddrPort]string{}
	b.tunnelFilters = b.authzTunnelFilters()
	for _, info := range b.bound {
		all := serviceVIPs(info.svc)
		if len(all) == 0 {
			if info.se != nil {
				b.problem(info.ref, "spec.addresses", fmt.Sprintf("%s: no address: the waypoint serves traffic to ServiceEntry addresses only", info.host))
			} else {
				b.problem(info.ref, "spec.clusterIP", "no cluster IP (headless Service): the waypoint serves traffic to Service VIPs only")
			}
			continue
		}
		for _, p := range info.ports {
			vips := b.claim(claimed, info.ref, clusterName(p.port, p.protocol, "", info.host), p.port, all)
			if len(vips) == 0 {
				continue
			}
			if p.protocol == "http" {
				name := clusterName(p.port, "http", "", info.host)
				var alpn []string
				if p.sniffed {
					alpn, sniffing = sniffedProtocols, true
				}
				chains = append(chains, filterChain(name, p.port, vips, alpn, b.headed(b.hcm(name, append(b.jwtFilters(info.host), b.authzFilters(info.host)...)))...))
			}
			if p.protocol == "tcp" || p.sniffed {
				name := clusterName(p.port, "tcp", "", info.host)
				// The AuthorizationPolicies' network RBAC filters, then
				// the proxy.
				filters := b.headed(append(b.authzTCPFilters(info.host), network(tcpProxyName, &tcpproxyv3.TcpProxy{
					StatPrefix:       name,
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: name},
				}))...)
				chains = append(chains, filterChain(name, p.port, vips, nil, filters...))
			}
		}
	}
	chains = append(chains, b.workloadChains(claimed, &sniffing)...)
	if len(chains) == 0 {
		return
	}
	slices.SortFunc(chains, func(x, y *listenerv3.FilterChain) int { return cmp.Compare(x.Name, y.Name) })
	l := &listenerv3.Listener{
		Name: listenerName,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: hboneListenPort},
		}}},
		FilterChains: chains,
	}
	if sniffing {
		l.ListenerFilters = []*listenerv3.ListenerFilter{{
			Name:       httpInspectorName,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&httpinspectorv3.HttpInspector{})},
		}}
	}
	b.out.Listeners = []*listenerv3.Listener{l}
}

// headed puts the network RBAC filters of the policies on the waypoint as
// a workload before a chain's filters.
func (b *builder) headed(fs ...*listenerv3.Filter) []*listenerv3.Filter {
	return append(slices.Clone(b.tunnelFilters), fs...)
}

// claim returns the addresses of addrs that no chain claimed yet on port,
// claiming them for the chain named name of obj. An address already
// claimed (a ServiceEntry naming a Service's VIP, two hosts of one entry)
// is reported and left to its first claimer: two chains for one
// destination would make the waypoint refuse the whole listener.
func (b *builder) claim(claimed map[netip.AddrPort]string, obj ObjectRef, name string, port int32, addrs []*corev3.CidrRange) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, r := range addrs {
		a, err := netip.ParseAddr(r.AddressPrefix)
		if err != nil {
			continue
		}
		d := netip.AddrPortFrom(a, uint16(port))
		if first, taken := claimed[d]; taken {
			b.problem(obj, "", fmt.Sprintf("%s is already served by chain %s; %s does not serve it", d, first, name))
			continue
		}
		claimed[d] = name
		out = append(out, r)
	}
	return out
}

// serviceVIPs are a Service's cluster IPs, each as a host prefix.
func serviceVIPs(svc *corev1.Service) []*corev3.CidrRange {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []*corev3.CidrRange
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue // "None" (headless) or garbage: no VIP
		}
		out = append(out, &corev3.CidrRange{AddressPrefix: ip.Unmap().String(), PrefixLen: wrapperspb.UInt32(uint32(ip.Unmap().BitLen()))})
	}
	return out
}

func filterChain(name string, port int32, vips []*corev3.CidrRange, alpn []string, fs ...*listenerv3.Filter) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{
			DestinationPort:      wrapperspb.UInt32(uint32(port)),
			PrefixRanges:         vips,
			ApplicationProtocols: alpn,
		},
		Filters: fs,
	}
}

func network(name string, m proto.Message) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(m)}}
}

// hcm is the HTTP connection manager of the chain named name: routes from
// RDS under the same name; the RBAC filters of the AuthorizationPolicies
// that apply; the fault filter, left empty, when a route of that
// configuration carries a per-route fault (Istio's shape); then the
// router.
func (b *builder) hcm(name string, rbac []*hcmv3.HttpFilter) *listenerv3.Filter {
	filters := rbac
	if b.usesFault(name) {
		filters = append(filters, &hcmv3.HttpFilter{Name: faultName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})}})
	}
	filters = append(filters, &hcmv3.HttpFilter{Name: routerName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}})
	return network(hcmName, &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: name,
			ConfigSource: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
		}},
		HttpFilters: filters,
	})
}

// usesFault reports whether the route configuration named name has a
// route with a per-route fault.
func (b *builder) usesFault(name string) bool {
	for _, rc := range b.out.Routes {
		if rc.Name != name {
			continue
		}
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				if _, ok := r.TypedPerFilterConfig[faultName]; ok {
					return true
				}
			}
		}
	}
	return false
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err)) // a well-formed message always marshals
	}
	return a
}
