package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The filter names of the listener shape zmeshd sends (Envoy's canonical
// names, as istiod writes them).
const (
	httpInspectorName = "envoy.filters.listener.http_inspector"
	hcmName           = "envoy.filters.network.http_connection_manager"
	tcpProxyName      = "envoy.filters.network.tcp_proxy"
	netRBACName       = "envoy.filters.network.rbac"
	rbacFilterName    = "envoy.filters.http.rbac"
	faultFilterName   = "envoy.filters.http.fault"
	jwtFilterName     = "envoy.filters.http.jwt_authn"
	routerFilterName  = "envoy.filters.http.router"
)

// sniffedProtocols are the application_protocols of a sniffed port's HTTP
// chain: what Envoy's http_inspector reports for an HTTP/1.x request line
// or the HTTP/2 preface.
var sniffedProtocols = []string{"h2c", "http/1.0", "http/1.1"}

// listenerResource names a listener in errors as the other compilers name
// their resources.
func listenerResource(name string) string { return fmt.Sprintf("listeners %q", name) }

// CompileListener validates a waypoint's Listener against the supported
// subset and compiles its filter chains, keyed by the destinations (VIP:port)
// they match. It also returns the route configuration names its HTTP chains
// need (RDS), sorted and unique. Any set field the waypoint does not
// implement, any invalid value, and any destination two chains claim is a
// *NackError whose Resource is `listeners "<name>"`, naming the field path.
func CompileListener(l *listenerv3.Listener) (map[netip.AddrPort]*Chain, []string, error) {
	chains, routes, err := compileListener(l)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = listenerResource(l.GetName())
		}
		return nil, nil, err
	}
	return chains, routes, nil
}

// half is one filter chain before a sniffed port's two chains are joined.
type half struct {
	index int // in filter_chains, for errors
	name  string
	sniff bool // has application_protocols: the HTTP half of a sniffed port
	chain *Chain
}

func compileListener(l *listenerv3.Listener) (map[netip.AddrPort]*Chain, []string, error) {
	if l == nil {
		return nil, nil, nackf("", "no listener")
	}
	if err := checkSupported(l.ProtoReflect(), ""); err != nil {
		return nil, nil, err
	}
	if l.GetName() == "" {
		return nil, nil, nackf("name", "required")
	}
	inspector := false
	for i, lf := range l.GetListenerFilters() {
		p := fmt.Sprintf("listener_filters[%d]", i)
		if lf.GetName() != httpInspectorName {
			return nil, nil, nackf(p+".name", "%q not supported (only %q)", lf.GetName(), httpInspectorName)
		}
		if _, err := typed[*httpinspectorv3.HttpInspector](p+".typed_config", lf.GetTypedConfig(), false); err != nil {
			return nil, nil, err
		}
		inspector = true
	}

	// Each destination may be claimed by one HTTP half and one TCP half,
	// and then only when the HTTP half sniffs.
	type claim struct{ http, tcp *half }
	claims := map[netip.AddrPort]*claim{}
	var order []netip.AddrPort
	names := map[string]int{}
	for i, fc := range l.GetFilterChains() {
		p := fmt.Sprintf("filter_chains[%d]", i)
		if fc.GetName() == "" {
			// The chain's name is its route configuration's and its
			// metrics' name, and errors name chains by it.
			return nil, nil, nackf(p+".name", "required")
		}
		if j, dup := names[fc.GetName()]; dup {
			return nil, nil, nackf(p+".name", "%q is also filter_chains[%d]'s name", fc.GetName(), j)
		}
		names[fc.GetName()] = i
		h, dests, err := filterChain(p, i, fc)
		if err != nil {
			return nil, nil, err
		}
		if h.sniff && !inspector {
			return nil, nil, nackf(p+".filter_chain_match.application_protocols",
				"set but the listener has no %s listener filter to detect them", httpInspectorName)
		}
		for _, d := range dests {
			c := claims[d]
			if c == nil {
				c = &claim{}
				claims[d] = c
				order = append(order, d)
			}
			slot := &c.tcp
			if h.chain.Protocol == ChainHTTP {
				slot = &c.http
			}
			if prev := *slot; prev != nil {
				return nil, nil, nackf(p+".filter_chain_match", "destination %s is also matched by filter_chains[%d] (%q)", d, prev.index, prev.name)
			}
			*slot = h
			if c.http != nil && c.tcp != nil && !c.http.sniff {
				// Envoy would pick one by its match rules; a translation
				// that lets two chains claim one destination has a bug.
				other := c.http
				if other == h {
					other = c.tcp
				}
				return nil, nil, nackf(p+".filter_chain_match", "destination %s is also matched by filter_chains[%d] (%q)", d, other.index, other.name)
			}
		}
	}

	out := make(map[netip.AddrPort]*Chain, len(claims))
	// One Chain per pair of halves, shared by every destination the pair
	// serves (a dual-stack service's VIPs).
	type pair struct{ http, tcp *half }
	joined := map[pair]*Chain{}
	routeSet := map[string]bool{}
	for _, d := range order {
		c := claims[d]
		switch {
		case c.http != nil && c.http.sniff && c.tcp == nil:
			return nil, nil, nackf(fmt.Sprintf("filter_chains[%d].filter_chain_match.application_protocols", c.http.index),
				"destination %s sniffs for HTTP but no TCP chain matches it for the other bytes", d)
		case c.http != nil && c.tcp != nil:
			k := pair{c.http, c.tcp}
			ch := joined[k]
			if ch == nil {
				ch = &Chain{
					Name: c.http.chain.Name, Protocol: ChainSniff, StatPrefix: c.http.chain.StatPrefix,
					RouteConfig: c.http.chain.RouteConfig, HTTPFilters: c.http.chain.HTTPFilters, ConnFilters: c.http.chain.ConnFilters,
					NormalizePath: c.http.chain.NormalizePath, MergeSlashes: c.http.chain.MergeSlashes,
					TCPCluster: c.tcp.chain.TCPCluster, TCPFilters: c.tcp.chain.TCPFilters,
				}
				joined[k] = ch
			}
			out[d] = ch
		case c.http != nil:
			out[d] = c.http.chain
		default:
			out[d] = c.tcp.chain
		}
		if rc := out[d].RouteConfig; rc != "" {
			routeSet[rc] = true
		}
	}
	routes := make([]string, 0, len(routeSet))
	for r := range routeSet {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	return out, routes, nil
}

// filterChain compiles one filter chain and lists the destinations its
// match claims.
func filterChain(path string, index int, fc *listenerv3.FilterChain) (*half, []netip.AddrPort, error) {
	h := &half{index: index, name: fc.GetName()}
	m := fc.GetFilterChainMatch()
	mp := path + ".filter_chain_match"
	if m == nil {
		return nil, nil, nackf(mp, "required: a chain serves the destinations it names")
	}
	port := m.GetDestinationPort()
	if port == nil {
		return nil, nil, nackf(mp+".destination_port", "required")
	}
	if port.GetValue() == 0 || port.GetValue() > 65535 {
		return nil, nil, nackf(mp+".destination_port", "%d is not a port", port.GetValue())
	}
	if len(m.GetPrefixRanges()) == 0 {
		// Without addresses the chain would match every destination on
		// the port, which a waypoint serving several services must not.
		return nil, nil, nackf(mp+".prefix_ranges", "required: the service's VIPs")
	}
	var dests []netip.AddrPort
	for i, r := range m.GetPrefixRanges() {
		rp := fmt.Sprintf("%s.prefix_ranges[%d]", mp, i)
		a, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil || a.Zone() != "" {
			return nil, nil, nackf(rp+".address_prefix", "%q is not an IP address", r.GetAddressPrefix())
		}
		a = a.Unmap()
		if r.GetPrefixLen() == nil || int(r.GetPrefixLen().GetValue()) != a.BitLen() {
			// A tunnel names one destination address; a range would make
			// the chain's reach depend on what else is in it.
			return nil, nil, nackf(rp+".prefix_len", "must be %d (one address)", a.BitLen())
		}
		d := netip.AddrPortFrom(a, uint16(port.GetValue()))
		if slices.Contains(dests, d) {
			return nil, nil, nackf(rp, "%s listed twice", a)
		}
		dests = append(dests, d)
	}
	if ap := m.GetApplicationProtocols(); len(ap) > 0 {
		got := slices.Clone(ap)
		sort.Strings(got)
		if !slices.Equal(got, sniffedProtocols) {
			return nil, nil, nackf(mp+".application_protocols", "%q not supported (only the sniffed set [\"http/1.0\", \"http/1.1\", \"h2c\"])", ap)
		}
		h.sniff = true
	}

	fp := path + ".filters"
	fs := fc.GetFilters()
	if len(fs) == 0 {
		return nil, nil, nackf(fp, "no filters; %s filters then one %s or one %s are supported", netRBACName, hcmName, tcpProxyName)
	}
	// The last filter decides the chain's kind; before it only network
	// RBAC filters, which check the connection (the tunnel) once.
	last := len(fs) - 1
	f := fs[last]
	fp = fmt.Sprintf("%s[%d]", fp, last)
	var netFilters []HTTPFilter
	for i, rf := range fs[:last] {
		rp := fmt.Sprintf("%s.filters[%d]", path, i)
		if rf.GetName() != netRBACName {
			return nil, nil, nackf(rp+".name", "%q not supported before %s (only %s)", rf.GetName(), f.GetName(), netRBACName)
		}
		cfg, err := typed[*netrbacv3.RBAC](rp+".typed_config", rf.GetTypedConfig(), true)
		if err != nil {
			return nil, nil, err
		}
		s, err := compileNetworkRBAC(cfg)
		if err != nil {
			return nil, nil, under(rp+".typed_config", err)
		}
		netFilters = append(netFilters, HTTPFilter{Name: rf.GetName(), RBAC: s})
	}
	switch f.GetName() {
	case hcmName:
		hcm, err := typed[*hcmv3.HttpConnectionManager](fp+".typed_config", f.GetTypedConfig(), true)
		if err != nil {
			return nil, nil, err
		}
		if h.chain, err = httpChain(fp+".typed_config", fc.GetName(), hcm); err != nil {
			return nil, nil, err
		}
		h.chain.ConnFilters = netFilters
	case tcpProxyName:
		tp, err := typed[*tcpproxyv3.TcpProxy](fp+".typed_config", f.GetTypedConfig(), true)
		if err != nil {
			return nil, nil, err
		}
		if h.sniff {
			return nil, nil, nackf(mp+".application_protocols", "set on a TCP chain (only a sniffed port's HTTP chain has them)")
		}
		tpp := fp + ".typed_config"
		if tp.GetStatPrefix() == "" {
			return nil, nil, nackf(tpp+".stat_prefix", "required")
		}
		if tp.GetCluster() == "" {
			return nil, nil, nackf(tpp+".cluster", "required")
		}
		h.chain = &Chain{Name: fc.GetName(), Protocol: ChainTCP, TCPCluster: tp.GetCluster(), StatPrefix: tp.GetStatPrefix(), TCPFilters: netFilters}
	default:
		return nil, nil, nackf(fp+".name", "%q not supported as a chain's last filter (only %s and %s)", f.GetName(), hcmName, tcpProxyName)
	}
	return h, dests, nil
}

// httpChain compiles an HTTP connection manager.
func httpChain(path, name string, hcm *hcmv3.HttpConnectionManager) (*Chain, error) {
	if hcm.GetStatPrefix() == "" {
		return nil, nackf(path+".stat_prefix", "required")
	}
	if c := hcm.GetCodecType(); c != hcmv3.HttpConnectionManager_AUTO {
		// The proxy tells HTTP/1.1 from HTTP/2 by the preface.
		return nil, nackf(path+".codec_type", "%s not supported (only AUTO)", c)
	}
	if a := hcm.GetPathWithEscapedSlashesAction(); a != hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT && a != hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		return nil, nackf(path+".path_with_escaped_slashes_action", "%s not supported (only KEEP_UNCHANGED)", a)
	}
	rds := hcm.GetRds()
	if rds == nil {
		return nil, nackf(path+".rds", "required: routes come over RDS")
	}
	if rds.GetRouteConfigName() == "" {
		return nil, nackf(path+".rds.route_config_name", "required")
	}
	cs := rds.GetConfigSource()
	if cs.GetAds() == nil {
		return nil, nackf(path+".rds.config_source.ads", "required: routes come over the same ADS stream")
	}
	if v := cs.GetResourceApiVersion(); v != corev3.ApiVersion_V3 {
		return nil, nackf(path+".rds.config_source.resource_api_version", "%s not supported (only V3)", v)
	}
	ch := &Chain{
		Name: name, Protocol: ChainHTTP, RouteConfig: rds.GetRouteConfigName(), StatPrefix: hcm.GetStatPrefix(),
		NormalizePath: hcm.GetNormalizePath().GetValue(), MergeSlashes: hcm.GetMergeSlashes(),
	}
	fs := hcm.GetHttpFilters()
	if len(fs) == 0 || fs[len(fs)-1].GetName() != routerFilterName {
		return nil, nackf(path+".http_filters", "the last filter must be %s", routerFilterName)
	}
	for i, f := range fs {
		p := fmt.Sprintf("%s.http_filters[%d]", path, i)
		switch f.GetName() {
		case routerFilterName:
			if i != len(fs)-1 {
				return nil, nackf(p+".name", "%s must be the last filter", routerFilterName)
			}
			if _, err := typed[*routerv3.Router](p+".typed_config", f.GetTypedConfig(), false); err != nil {
				return nil, err
			}
		case rbacFilterName:
			cfg, err := typed[*rbacfilterv3.RBAC](p+".typed_config", f.GetTypedConfig(), true)
			if err != nil {
				return nil, err
			}
			s, err := compileRBAC(cfg)
			if err != nil {
				return nil, under(p+".typed_config", err)
			}
			ch.HTTPFilters = append(ch.HTTPFilters, HTTPFilter{Name: f.GetName(), RBAC: s})
		case jwtFilterName:
			cfg, err := typed[*jwtv3.JwtAuthentication](p+".typed_config", f.GetTypedConfig(), true)
			if err != nil {
				return nil, err
			}
			jf, err := compileJWT(cfg)
			if err != nil {
				return nil, under(p+".typed_config", err)
			}
			ch.HTTPFilters = append(ch.HTTPFilters, HTTPFilter{Name: f.GetName(), JWT: jf})
		case faultFilterName:
			cfg, err := typed[*faultv3.HTTPFault](p+".typed_config", f.GetTypedConfig(), true)
			if err != nil {
				return nil, err
			}
			ft, err := compileFault(p+".typed_config", cfg)
			if err != nil {
				return nil, err
			}
			ch.HTTPFilters = append(ch.HTTPFilters, HTTPFilter{Name: f.GetName(), Fault: ft})
		default:
			return nil, nackf(p+".name", "%q not supported (only %s, %s, %s and %s)", f.GetName(), jwtFilterName, rbacFilterName, faultFilterName, routerFilterName)
		}
	}
	return ch, nil
}

// typed unpacks a filter's typed_config, which must be of type M (absent
// only when !required: the filter's default configuration).
func typed[M proto.Message](path string, a *anypb.Any, required bool) (M, error) {
	var zero M
	if a == nil {
		if required {
			return zero, nackf(path, "required")
		}
		return zero, nil
	}
	m, err := unpack(a)
	if err != nil {
		return zero, nackf(path, "%v", err)
	}
	t, ok := m.(M)
	if !ok {
		return zero, nackf(path, "%s is not a %s", a.GetTypeUrl(), zero.ProtoReflect().Descriptor().FullName())
	}
	return t, nil
}

// under prefixes a *NackError's path with where the compiled value sits.
func under(path string, err error) error {
	var ne *NackError
	if errors.As(err, &ne) {
		if ne.Path == "" {
			ne.Path = path
		} else {
			ne.Path = path + "." + ne.Path
		}
	}
	return err
}
