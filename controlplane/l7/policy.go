package l7

import (
	"fmt"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
)

const httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func drRef(dr *networkingv1.DestinationRule) ObjectRef {
	return ObjectRef{"DestinationRule", dr.Namespace, dr.Name}
}

// destinationRule picks the DestinationRule of a Service's host: one in the
// Service's namespace first, then one in the root namespace, then one
// exported to the Service's namespace from elsewhere; each list in
// namespace/name order. Rules with a workloadSelector apply to sidecars
// only; wildcard hosts are not matched yet. Other rules for the same host
// are reported: Istio would merge them.
func (b *builder) destinationRule(svc *corev1.Service, host string) *networkingv1.DestinationRule {
	var own, root, other []*networkingv1.DestinationRule
	for _, dr := range b.snap.DestinationRules {
		if dr.Spec.WorkloadSelector != nil || resolveHost(dr.Spec.Host, dr.Namespace, b.opts.Mesh.DomainSuffix) != host {
			continue
		}
		switch {
		case dr.Namespace == svc.Namespace:
			own = append(own, dr)
		case dr.Namespace == b.opts.Mesh.RootNamespace:
			root = append(root, dr)
		case exportedTo(dr.Spec.ExportTo, svc.Namespace):
			other = append(other, dr)
		}
	}
	all := append(append(own, root...), other...)
	if len(all) == 0 {
		return nil
	}
	for _, dr := range all[1:] {
		b.problem(drRef(dr), "spec.host", fmt.Sprintf("%s already has DestinationRule %s/%s; merging several rules for one host is not supported, this one is ignored",
			host, all[0].Namespace, all[0].Name))
	}
	return all[0]
}

// resolveHost completes a short host ("reviews") relative to the rule's
// namespace, as Istio does.
func resolveHost(h, namespace, suffix string) string {
	if strings.Contains(h, ".") || strings.HasPrefix(h, "*") {
		return h
	}
	return h + "." + namespace + ".svc." + suffix
}

func exportedTo(exportTo []string, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == ns {
			return true
		}
	}
	return false
}

// policy is the traffic policy in force on one cluster, each group with the
// field path it came from.
type policy struct {
	lb         *networking.LoadBalancerSettings
	lbPath     string
	pool       *networking.ConnectionPoolSettings
	poolPath   string
	outlier    *networking.OutlierDetection
	outlierPth string
	// unsupported are set fields the waypoint cannot honour, by path.
	unsupported []string
}

// mergePolicy applies Istio's merge: the top-level policy, its port-level
// settings for port, then the subset's policy and its port-level settings,
// each set group replacing the one before.
func mergePolicy(top, subset *networking.TrafficPolicy, subsetIndex int, port uint32) policy {
	var p policy
	p.apply(top, "spec.trafficPolicy", port)
	p.apply(subset, fmt.Sprintf("spec.subsets[%d].trafficPolicy", subsetIndex), port)
	return p
}

func (p *policy) apply(tp *networking.TrafficPolicy, path string, port uint32) {
	if tp == nil {
		return
	}
	p.group(tp.LoadBalancer, tp.ConnectionPool, tp.OutlierDetection, path)
	if tp.Tls != nil {
		p.unsupported = append(p.unsupported, path+".tls")
	}
	if tp.Tunnel != nil {
		p.unsupported = append(p.unsupported, path+".tunnel")
	}
	if tp.ProxyProtocol != nil {
		p.unsupported = append(p.unsupported, path+".proxyProtocol")
	}
	if tp.RetryBudget != nil {
		p.unsupported = append(p.unsupported, path+".retryBudget")
	}
	for i, pl := range tp.PortLevelSettings {
		if pl == nil || pl.Port == nil || pl.Port.Number != port {
			continue
		}
		pp := fmt.Sprintf("%s.portLevelSettings[%d]", path, i)
		p.group(pl.LoadBalancer, pl.ConnectionPool, pl.OutlierDetection, pp)
		if pl.Tls != nil {
			p.unsupported = append(p.unsupported, pp+".tls")
		}
	}
}

func (p *policy) group(lb *networking.LoadBalancerSettings, pool *networking.ConnectionPoolSettings, od *networking.OutlierDetection, path string) {
	if lb != nil {
		p.lb, p.lbPath = lb, path+".loadBalancer"
	}
	if pool != nil {
		p.pool, p.poolPath = pool, path+".connectionPool"
	}
	if od != nil {
		p.outlier, p.outlierPth = od, path+".outlierDetection"
	}
}

// applyPolicy sets the cluster's load balancing, outlier detection and
// limits from pol, reporting what it cannot express on the rule.
func (b *builder) applyPolicy(c *clusterv3.Cluster, cs clusterSpec, pol policy) {
	ref := drRef(cs.dr)
	for _, f := range pol.unsupported {
		b.problem(ref, f, "not supported by the waypoint (traffic to in-mesh pods is always HBONE with mTLS); ignored")
	}
	if pol.lb != nil {
		b.loadBalancer(c, ref, pol.lb, pol.lbPath)
	}
	if pol.outlier != nil {
		b.outlierDetection(c, ref, pol.outlier, pol.outlierPth)
	}
	if pol.pool != nil {
		b.connectionPool(c, cs, ref, pol.pool, pol.poolPath)
	}
}

func (b *builder) loadBalancer(c *clusterv3.Cluster, ref ObjectRef, lb *networking.LoadBalancerSettings, path string) {
	switch p := lb.LbPolicy.(type) {
	case *networking.LoadBalancerSettings_Simple:
		switch p.Simple {
		case networking.LoadBalancerSettings_UNSPECIFIED, networking.LoadBalancerSettings_LEAST_REQUEST:
			c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		case networking.LoadBalancerSettings_ROUND_ROBIN:
			c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		case networking.LoadBalancerSettings_RANDOM:
			c.LbPolicy = clusterv3.Cluster_RANDOM
		default:
			b.problem(ref, path+".simple", fmt.Sprintf("%s is not supported by the waypoint; LEAST_REQUEST is used", p.Simple))
		}
	case *networking.LoadBalancerSettings_ConsistentHash:
		b.consistentHash(c, ref, p.ConsistentHash, path+".consistentHash")
	}
	if lb.ZoneAwareLbSetting != nil {
		b.problem(ref, path+".zoneAwareLbSetting", "not supported by the waypoint; ignored")
	}
	if lb.WarmupDurationSecs != nil || lb.Warmup != nil {
		b.problem(ref, path+".warmup", "slow start is not supported by the waypoint; ignored")
	}
}

// consistentHash gives RING_HASH (or MAGLEV). The hash key itself is the
// hash_policy of the routes to the cluster (hashPolicy).
func (b *builder) consistentHash(c *clusterv3.Cluster, ref ObjectRef, ch *networking.LoadBalancerSettings_ConsistentHashLB, path string) {
	if ch == nil {
		return
	}
	switch a := ch.HashAlgorithm.(type) {
	case *networking.LoadBalancerSettings_ConsistentHashLB_Maglev:
		c.LbPolicy = clusterv3.Cluster_MAGLEV
		if a.Maglev != nil && a.Maglev.TableSize != 0 {
			c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(a.Maglev.TableSize)}}
		}
	default:
		size := ch.MinimumRingSize
		if r, ok := a.(*networking.LoadBalancerSettings_ConsistentHashLB_RingHash_); ok && r.RingHash != nil && r.RingHash.MinimumRingSize != 0 {
			size = r.RingHash.MinimumRingSize
		}
		if size == 0 {
			size = 1024
		}
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
			MinimumRingSize: wrapperspb.UInt64(size),
			HashFunction:    clusterv3.Cluster_RingHashLbConfig_XX_HASH,
		}}
	}
	if ch.HashKey == nil {
		b.problem(ref, path, "no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName): requests are spread over the ring without a key")
	}
}

// outlierDetection follows Istio's conversion. Success-rate ejection is
// switched off explicitly: Envoy enforces it by default and the waypoint
// does not implement it.
func (b *builder) outlierDetection(c *clusterv3.Cluster, ref ObjectRef, od *networking.OutlierDetection, path string) {
	out := &clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
	if od.ConsecutiveErrors != 0 {
		b.problem(ref, path+".consecutiveErrors", "deprecated and not supported; use consecutive5xxErrors")
	}
	if v := od.Consecutive_5XxErrors; v != nil {
		out.Consecutive_5Xx = wrapperspb.UInt32(v.Value)
		if v.Value == 0 {
			out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(0)
		}
	}
	if v := od.ConsecutiveGatewayErrors; v != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(v.Value)
		if v.Value > 0 {
			out.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
		}
	}
	if od.SplitExternalLocalOriginErrors {
		out.SplitExternalLocalOriginErrors = true
		out.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
		if v := od.ConsecutiveLocalOriginFailures; v != nil {
			out.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(v.Value)
			if v.Value == 0 {
				out.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(0)
			}
		}
	} else if od.ConsecutiveLocalOriginFailures != nil {
		b.problem(ref, path+".consecutiveLocalOriginFailures", "has no effect without splitExternalLocalOriginErrors; ignored")
	}
	if len(od.OutlierDetectionHttpErrorCodes) > 0 {
		b.problem(ref, path+".outlierDetectionHttpErrorCodes", "not supported by the waypoint; ignored")
	}
	if od.Interval != nil {
		out.Interval = durationpb.New(od.Interval.AsDuration())
	}
	if od.BaseEjectionTime != nil {
		out.BaseEjectionTime = durationpb.New(od.BaseEjectionTime.AsDuration())
	}
	if od.MaxEjectionPercent > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(uint32(min(od.MaxEjectionPercent, 100)))
	}
	c.OutlierDetection = out
	// Istio's minHealthPercent is the panic threshold; unset is 0, which
	// turns panic mode off.
	if od.MinHealthPercent >= 0 {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: float64(min(od.MinHealthPercent, 100))}}
	}
}

func (b *builder) connectionPool(c *clusterv3.Cluster, cs clusterSpec, ref ObjectRef, pool *networking.ConnectionPoolSettings, path string) {
	th := c.CircuitBreakers.Thresholds[0]
	if t := pool.Tcp; t != nil {
		if t.MaxConnections > 0 {
			th.MaxConnections = wrapperspb.UInt32(uint32(t.MaxConnections))
		}
		if t.ConnectTimeout != nil && t.ConnectTimeout.AsDuration() > 0 {
			c.ConnectTimeout = durationpb.New(t.ConnectTimeout.AsDuration())
		}
		if t.TcpKeepalive != nil {
			b.problem(ref, path+".tcp.tcpKeepalive", "not supported by the waypoint; ignored")
		}
		if t.MaxConnectionDuration != nil {
			b.problem(ref, path+".tcp.maxConnectionDuration", "not supported by the waypoint; ignored")
		}
		if t.IdleTimeout != nil {
			b.problem(ref, path+".tcp.idleTimeout", "not supported by the waypoint; ignored")
		}
	}
	h := pool.Http
	if h == nil {
		return
	}
	if h.Http1MaxPendingRequests > 0 {
		th.MaxPendingRequests = wrapperspb.UInt32(uint32(h.Http1MaxPendingRequests))
	}
	if h.Http2MaxRequests > 0 {
		th.MaxRequests = wrapperspb.UInt32(uint32(h.Http2MaxRequests))
	}
	if h.MaxRetries > 0 {
		th.MaxRetries = wrapperspb.UInt32(uint32(h.MaxRetries))
	}
	if h.Http2KeepAlive != nil {
		b.problem(ref, path+".http.http2KeepAlive", "not supported by the waypoint; ignored")
	}
	if cs.port.protocol != "http" {
		if h.MaxRequestsPerConnection > 0 || h.IdleTimeout != nil || h.UseClientProtocol || h.MaxConcurrentStreams > 0 ||
			h.H2UpgradePolicy != networking.ConnectionPoolSettings_HTTPSettings_DEFAULT {
			b.problem(ref, path+".http", fmt.Sprintf("port %d is not HTTP; HTTP protocol options ignored", cs.port.port))
		}
		return
	}
	http2 := cs.port.http2 || h.H2UpgradePolicy == networking.ConnectionPoolSettings_HTTPSettings_UPGRADE
	common := &corev3.HttpProtocolOptions{}
	if h.MaxRequestsPerConnection > 0 {
		common.MaxRequestsPerConnection = wrapperspb.UInt32(uint32(h.MaxRequestsPerConnection))
	}
	if h.IdleTimeout != nil {
		common.IdleTimeout = durationpb.New(h.IdleTimeout.AsDuration())
	}
	var h2 *corev3.Http2ProtocolOptions
	if h.MaxConcurrentStreams > 0 {
		if http2 || h.UseClientProtocol {
			h2 = &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(uint32(h.MaxConcurrentStreams))}
		} else {
			b.problem(ref, path+".http.maxConcurrentStreams", "applies to HTTP/2 upstreams only; ignored for this HTTP/1.1 port")
		}
	}
	if common.MaxRequestsPerConnection == nil && common.IdleTimeout == nil {
		common = nil
	}
	if common != nil || h2 != nil || http2 || h.UseClientProtocol {
		c.TypedExtensionProtocolOptions = httpOptions(common, http2, h.UseClientProtocol, h2)
	}
}

// httpOptions is the upstream HttpProtocolOptions of a cluster.
func httpOptions(common *corev3.HttpProtocolOptions, http2, downstream bool, h2 ...*corev3.Http2ProtocolOptions) map[string]*anypb.Any {
	h2opts := &corev3.Http2ProtocolOptions{}
	if len(h2) > 0 && h2[0] != nil {
		h2opts = h2[0]
	}
	o := &httpv3.HttpProtocolOptions{CommonHttpProtocolOptions: common}
	switch {
	case downstream:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: h2opts}}
	case http2:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2opts}}}
	default:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}}}
	}
	a, err := anypb.New(o)
	if err != nil {
		panic(err) // a well-formed message always marshals
	}
	return map[string]*anypb.Any{httpOptionsKey: a}
}
