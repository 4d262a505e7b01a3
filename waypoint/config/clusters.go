package config

import (
	"errors"
	"fmt"
	"math"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// maxMaglevTableSize is Envoy's upper bound for maglev_lb_config.table_size.
const maxMaglevTableSize = 5000011

// CompileClusters validates clusters against the supported subset and
// compiles them, keyed by name. Names must be unique. The first problem is
// an error (a *NackError whose Resource is `clusters "<name>"`) naming the
// field path.
func CompileClusters(cs []*clusterv3.Cluster) (map[string]*upstream.Cluster, error) {
	out := make(map[string]*upstream.Cluster, len(cs))
	for i, c := range cs {
		cc, err := CompileCluster(c)
		if err != nil {
			return nil, err
		}
		if _, dup := out[cc.Name]; dup {
			return nil, &NackError{Resource: fmt.Sprintf("clusters %q", cc.Name), Path: "name",
				Problem: fmt.Sprintf("duplicate cluster name (clusters[%d])", i)}
		}
		out[cc.Name] = cc
	}
	return out, nil
}

// CompileCluster validates one cluster and compiles it.
func CompileCluster(c *clusterv3.Cluster) (*upstream.Cluster, error) {
	cc, err := compileCluster(c)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = fmt.Sprintf("clusters %q", c.GetName())
		}
		return nil, err
	}
	return cc, nil
}

func compileCluster(c *clusterv3.Cluster) (*upstream.Cluster, error) {
	if c == nil {
		return nil, nackf("", "no cluster")
	}
	// Refused before the walk so that the message says why: the waypoint
	// has one way to reach an endpoint, HBONE with the identity the
	// endpoint's metadata names.
	if ts := c.GetTransportSocket(); ts != nil {
		if ts.GetName() != "" {
			return nil, nackf("transport_socket.name", "%q not supported: endpoints are dialled over HBONE, verifying the identity in their metadata", ts.GetName())
		}
		return nil, nackf("transport_socket", "not supported: endpoints are dialled over HBONE, verifying the identity in their metadata")
	}
	if err := checkSupported(c.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if c.GetName() == "" {
		return nil, nackf("name", "required")
	}
	out := &upstream.Cluster{Name: c.GetName(), EDSServiceName: c.GetName()}

	// Only EDS: every destination of a waypoint is a workload zmeshd knows,
	// with an identity to verify, so there is no passthrough to an
	// original destination and no static or DNS cluster.
	if t := c.GetType(); t != clusterv3.Cluster_EDS {
		return nil, nackf("type", "%s not supported (only EDS)", t)
	}
	eds := c.GetEdsClusterConfig()
	if eds.GetEdsConfig().GetAds() == nil {
		return nil, nackf("eds_cluster_config.eds_config.ads", "required: endpoints come over the same ADS stream")
	}
	if v := eds.GetEdsConfig().GetResourceApiVersion(); v != corev3.ApiVersion_V3 {
		return nil, nackf("eds_cluster_config.eds_config.resource_api_version", "%s not supported (only V3)", v)
	}
	if n := eds.GetServiceName(); n != "" {
		out.EDSServiceName = n
	}
	var err error
	out.EDSInitialFetchTimeout = upstream.DefaultInitialFetchTimeout
	if d := eds.GetEdsConfig().GetInitialFetchTimeout(); d != nil {
		if out.EDSInitialFetchTimeout, err = duration("eds_cluster_config.eds_config.initial_fetch_timeout", d); err != nil {
			return nil, err
		}
	}
	out.ConnectTimeout = upstream.DefaultConnectTimeout
	if d := c.GetConnectTimeout(); d != nil {
		if out.ConnectTimeout, err = positiveDuration("connect_timeout", d); err != nil {
			return nil, err
		}
	}
	if out.LB, err = loadBalancing(c); err != nil {
		return nil, err
	}
	if od := c.GetOutlierDetection(); od != nil {
		if out.Outlier, err = outlierDetection("outlier_detection", od); err != nil {
			return nil, err
		}
	}
	if out.Limits, err = limits("circuit_breakers", c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	if out.HTTP, err = httpOptions(c.GetTypedExtensionProtocolOptions()); err != nil {
		return nil, err
	}
	if out.Services, out.Subset, err = istioClusterMetadata(c.GetMetadata().GetFilterMetadata()["istio"]); err != nil {
		return nil, err
	}
	return out, nil
}

func loadBalancing(c *clusterv3.Cluster) (upstream.LoadBalancing, error) {
	lb := upstream.LoadBalancing{HealthyPanicThreshold: upstream.DefaultHealthyPanicThreshold}
	// An lb config for another policy would be ignored by Envoy; here it is
	// refused, so that a mistake in the translation shows.
	wrongConfig := func(field string) error {
		return nackf(field, "set but lb_policy is %s", c.GetLbPolicy())
	}
	switch p := c.GetLbPolicy(); p {
	case clusterv3.Cluster_ROUND_ROBIN:
		lb.Kind = upstream.RoundRobin
	case clusterv3.Cluster_RANDOM:
		lb.Kind = upstream.Random
	case clusterv3.Cluster_LEAST_REQUEST:
		lb.Kind = upstream.LeastRequest
		lb.ChoiceCount = upstream.DefaultChoiceCount
		if v := c.GetLeastRequestLbConfig().GetChoiceCount(); v != nil {
			if v.GetValue() < 2 {
				return lb, nackf("least_request_lb_config.choice_count", "%d: must be at least 2", v.GetValue())
			}
			lb.ChoiceCount = v.GetValue()
		}
	case clusterv3.Cluster_RING_HASH:
		lb.Kind = upstream.RingHash
		lb.MinimumRingSize, lb.MaximumRingSize = upstream.DefaultMinimumRingSize, upstream.DefaultMaximumRingSize
		rh := c.GetRingHashLbConfig()
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return lb, nackf("ring_hash_lb_config.hash_function", "%s not supported (only XX_HASH)", rh.GetHashFunction())
		}
		if v := rh.GetMinimumRingSize(); v != nil {
			lb.MinimumRingSize = v.GetValue()
		}
		if v := rh.GetMaximumRingSize(); v != nil {
			lb.MaximumRingSize = v.GetValue()
		}
		const ringLimit = 8 * 1024 * 1024 // Envoy's bound on both sizes
		if lb.MinimumRingSize == 0 || lb.MinimumRingSize > ringLimit {
			return lb, nackf("ring_hash_lb_config.minimum_ring_size", "%d: must be in [1, %d]", lb.MinimumRingSize, ringLimit)
		}
		if lb.MaximumRingSize == 0 || lb.MaximumRingSize > ringLimit {
			return lb, nackf("ring_hash_lb_config.maximum_ring_size", "%d: must be in [1, %d]", lb.MaximumRingSize, ringLimit)
		}
		if lb.MinimumRingSize > lb.MaximumRingSize {
			return lb, nackf("ring_hash_lb_config", "minimum_ring_size %d exceeds maximum_ring_size %d", lb.MinimumRingSize, lb.MaximumRingSize)
		}
	case clusterv3.Cluster_MAGLEV:
		lb.Kind = upstream.Maglev
		lb.MaglevTableSize = upstream.DefaultMaglevTableSize
		if v := c.GetMaglevLbConfig().GetTableSize(); v != nil {
			if !isPrime(v.GetValue()) || v.GetValue() > maxMaglevTableSize {
				return lb, nackf("maglev_lb_config.table_size", "%d: must be a prime no larger than %d", v.GetValue(), maxMaglevTableSize)
			}
			lb.MaglevTableSize = v.GetValue()
		}
	default:
		return lb, nackf("lb_policy", "%s not supported", p)
	}
	if c.GetLeastRequestLbConfig() != nil && lb.Kind != upstream.LeastRequest {
		return lb, wrongConfig("least_request_lb_config")
	}
	if c.GetRingHashLbConfig() != nil && lb.Kind != upstream.RingHash {
		return lb, wrongConfig("ring_hash_lb_config")
	}
	if c.GetMaglevLbConfig() != nil && lb.Kind != upstream.Maglev {
		return lb, wrongConfig("maglev_lb_config")
	}
	common := c.GetCommonLbConfig()
	if t := common.GetHealthyPanicThreshold(); t != nil {
		if v := t.GetValue(); !(v >= 0 && v <= 100) {
			return lb, nackf("common_lb_config.healthy_panic_threshold.value", "%v: must be a percentage in [0, 100]", v)
		}
		lb.HealthyPanicThreshold = t.GetValue()
	}
	lb.LocalityWeighted = common.GetLocalityWeightedLbConfig() != nil
	return lb, nil
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func outlierDetection(path string, od *clusterv3.OutlierDetection) (*upstream.OutlierDetection, error) {
	u32 := func(v *wrapperspb.UInt32Value, def uint32) uint32 {
		if v == nil {
			return def
		}
		return v.GetValue()
	}
	// Success-rate and failure-percentage ejection are not implemented.
	// Envoy runs success-rate ejection unless its enforcement is 0, so the
	// translation must say 0 rather than leave it to a default this proxy
	// would not honour.
	if v := od.GetEnforcingSuccessRate(); v == nil || v.GetValue() != 0 {
		return nil, nackf(path+".enforcing_success_rate", "must be set to 0: success-rate ejection is not supported")
	}
	if od.GetSplitExternalLocalOriginErrors() {
		if v := od.GetEnforcingLocalOriginSuccessRate(); v == nil || v.GetValue() != 0 {
			return nil, nackf(path+".enforcing_local_origin_success_rate", "must be set to 0 with split_external_local_origin_errors: success-rate ejection is not supported")
		}
	} else if od.GetConsecutiveLocalOriginFailure() != nil || od.GetEnforcingConsecutiveLocalOriginFailure() != nil {
		return nil, nackf(path+".consecutive_local_origin_failure", "needs split_external_local_origin_errors")
	}
	for _, f := range []struct {
		field string
		v     *wrapperspb.UInt32Value
	}{
		{"enforcing_local_origin_success_rate", od.GetEnforcingLocalOriginSuccessRate()},
		{"enforcing_failure_percentage", od.GetEnforcingFailurePercentage()},
		{"enforcing_failure_percentage_local_origin", od.GetEnforcingFailurePercentageLocalOrigin()},
	} {
		if f.v != nil && f.v.GetValue() != 0 {
			return nil, nackf(path+"."+f.field, "%d not supported (only 0)", f.v.GetValue())
		}
	}
	out := &upstream.OutlierDetection{
		Consecutive5xx:                 u32(od.GetConsecutive_5Xx(), 5),
		EnforcingConsecutive5xx:        u32(od.GetEnforcingConsecutive_5Xx(), 100),
		ConsecutiveGatewayFailure:      u32(od.GetConsecutiveGatewayFailure(), 5),
		EnforcingGatewayFailure:        u32(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		SplitExternalLocalOriginErrors: od.GetSplitExternalLocalOriginErrors(),
		ConsecutiveLocalOriginFailure:  u32(od.GetConsecutiveLocalOriginFailure(), 5),
		EnforcingLocalOriginFailure:    u32(od.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		MaxEjectionPercent:             u32(od.GetMaxEjectionPercent(), 10),
		Interval:                       10 * time.Second,
		BaseEjectionTime:               30 * time.Second,
		MaxEjectionTime:                300 * time.Second,
	}
	for _, f := range []struct {
		field string
		v     uint32
	}{
		{"max_ejection_percent", out.MaxEjectionPercent},
		{"enforcing_consecutive_5xx", out.EnforcingConsecutive5xx},
		{"enforcing_consecutive_gateway_failure", out.EnforcingGatewayFailure},
		{"enforcing_consecutive_local_origin_failure", out.EnforcingLocalOriginFailure},
	} {
		if f.v > 100 {
			return nil, nackf(path+"."+f.field, "%d: must be a percentage in [0, 100]", f.v)
		}
	}
	var err error
	for _, d := range []struct {
		field string
		in    *durationpb.Duration
		out   *time.Duration
	}{
		{"interval", od.GetInterval(), &out.Interval},
		{"base_ejection_time", od.GetBaseEjectionTime(), &out.BaseEjectionTime},
		{"max_ejection_time", od.GetMaxEjectionTime(), &out.MaxEjectionTime},
	} {
		if d.in == nil {
			continue
		}
		if *d.out, err = positiveDuration(path+"."+d.field, d.in); err != nil {
			return nil, err
		}
	}
	// Unset, the maximum is 300 s or the base ejection time, whichever is
	// larger (Envoy's rule); set, it may not be below the base.
	if od.GetMaxEjectionTime() == nil && out.BaseEjectionTime > out.MaxEjectionTime {
		out.MaxEjectionTime = out.BaseEjectionTime
	}
	if out.BaseEjectionTime > out.MaxEjectionTime {
		return nil, nackf(path+".base_ejection_time", "%v exceeds max_ejection_time %v", out.BaseEjectionTime, out.MaxEjectionTime)
	}
	return out, nil
}

func limits(path string, cb *clusterv3.CircuitBreakers) (upstream.Limits, error) {
	out := upstream.Limits{
		MaxConnections:     upstream.DefaultMaxConnections,
		MaxPendingRequests: upstream.DefaultMaxPendingRequests,
		MaxRequests:        upstream.DefaultMaxRequests,
		MaxRetries:         upstream.DefaultMaxRetries,
	}
	seen := false
	for i, t := range cb.GetThresholds() {
		p := fmt.Sprintf("%s.thresholds[%d]", path, i)
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			return out, nackf(p+".priority", "%s not supported (only DEFAULT)", t.GetPriority())
		}
		if seen {
			return out, nackf(p+".priority", "DEFAULT given twice")
		}
		seen = true
		for _, f := range []struct {
			v   *wrapperspb.UInt32Value
			out *uint32
		}{
			{t.GetMaxConnections(), &out.MaxConnections},
			{t.GetMaxPendingRequests(), &out.MaxPendingRequests},
			{t.GetMaxRequests(), &out.MaxRequests},
			{t.GetMaxRetries(), &out.MaxRetries},
		} {
			if f.v != nil {
				*f.out = f.v.GetValue()
			}
		}
	}
	return out, nil
}

func httpOptions(opts map[string]*anypb.Any) (upstream.HTTPOptions, error) {
	out := upstream.HTTPOptions{Protocol: upstream.HTTP1, IdleTimeout: upstream.DefaultIdleTimeout}
	for _, k := range sortedKeys(opts) {
		if k != httpProtocolOptionsKey {
			return out, nackf(fmt.Sprintf("typed_extension_protocol_options[%q]", k), "not supported (only %s)", httpProtocolOptionsKey)
		}
	}
	a, ok := opts[httpProtocolOptionsKey]
	if !ok {
		return out, nil
	}
	path := fmt.Sprintf("typed_extension_protocol_options[%q]", httpProtocolOptionsKey)
	m, err := unpack(a)
	if err != nil {
		return out, nackf(path, "%v", err)
	}
	hpo, ok := m.(*httpv3.HttpProtocolOptions)
	if !ok {
		return out, nackf(path, "type %s not supported (want %s)", m.ProtoReflect().Descriptor().FullName(), httpProtocolOptionsKey)
	}
	var h2 *corev3.Http2ProtocolOptions
	h2path := path + ".explicit_http_config.http2_protocol_options"
	switch p := hpo.GetUpstreamProtocolOptions().(type) {
	case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
		switch pc := p.ExplicitHttpConfig.GetProtocolConfig().(type) {
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions:
			out.Protocol = upstream.HTTP1
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions:
			out.Protocol, h2 = upstream.HTTP2, pc.Http2ProtocolOptions
		default:
			return out, nackf(path+".explicit_http_config", "one of http_protocol_options or http2_protocol_options is required")
		}
	case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
		// Without http2_protocol_options Envoy sends HTTP/2 requests
		// upstream as HTTP/1.1; the waypoint keeps HTTP/2 as HTTP/2.
		if p.UseDownstreamProtocolConfig.GetHttp2ProtocolOptions() == nil {
			return out, nackf(path+".use_downstream_protocol_config.http2_protocol_options", "required: HTTP/2 requests stay HTTP/2 upstream")
		}
		out.Protocol, h2 = upstream.Downstream, p.UseDownstreamProtocolConfig.GetHttp2ProtocolOptions()
		h2path = path + ".use_downstream_protocol_config.http2_protocol_options"
	case nil:
		return out, nackf(path, "one of explicit_http_config or use_downstream_protocol_config is required")
	}
	if v := h2.GetMaxConcurrentStreams(); v != nil {
		if v.GetValue() == 0 || v.GetValue() > math.MaxInt32 {
			return out, nackf(h2path+".max_concurrent_streams", "%d: must be in [1, %d]", v.GetValue(), math.MaxInt32)
		}
		out.MaxConcurrentStreams = v.GetValue()
	}
	common := hpo.GetCommonHttpProtocolOptions()
	if d := common.GetIdleTimeout(); d != nil {
		if out.IdleTimeout, err = duration(path+".common_http_protocol_options.idle_timeout", d); err != nil {
			return out, err
		}
	}
	out.MaxRequestsPerConnection = common.GetMaxRequestsPerConnection().GetValue()
	return out, nil
}

// istioClusterMetadata reads the services and subset istiod writes in a
// cluster's "istio" filter metadata. They only name the cluster, so other
// keys are left alone; a services list of the wrong shape is refused.
func istioClusterMetadata(s *structpb.Struct) ([]upstream.ServiceRef, string, error) {
	const path = `metadata.filter_metadata["istio"]`
	var out []upstream.ServiceRef
	subset := ""
	if v, ok := s.GetFields()["subset"]; ok {
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, "", nackf(path+".subset", "must be a string")
		}
		subset = sv.StringValue
	}
	v, ok := s.GetFields()["services"]
	if !ok {
		return nil, subset, nil
	}
	list, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		return nil, "", nackf(path+".services", "must be a list")
	}
	for i, e := range list.ListValue.GetValues() {
		p := fmt.Sprintf("%s.services[%d]", path, i)
		st, ok := e.GetKind().(*structpb.Value_StructValue)
		if !ok {
			return nil, "", nackf(p, "must be a struct")
		}
		var ref upstream.ServiceRef
		for _, f := range []struct {
			key string
			out *string
		}{{"host", &ref.Host}, {"name", &ref.Name}, {"namespace", &ref.Namespace}} {
			fv, ok := st.StructValue.GetFields()[f.key]
			if !ok {
				continue
			}
			sv, ok := fv.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return nil, "", nackf(p+"."+f.key, "must be a string")
			}
			*f.out = sv.StringValue
		}
		out = append(out, ref)
	}
	return out, subset, nil
}

func positiveDuration(path string, d *durationpb.Duration) (time.Duration, error) {
	v, err := duration(path, d)
	if err == nil && v == 0 {
		return 0, nackf(path, "must be greater than 0")
	}
	return v, err
}
