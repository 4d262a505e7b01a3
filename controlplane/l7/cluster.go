package l7

import (
	"math"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
)

// defaultConnectTimeout is Istio's mesh default connectTimeout.
const defaultConnectTimeout = 10 * time.Second

// clusterSpec is one cluster to build: a Service port, and a subset of its
// DestinationRule or none.
type clusterSpec struct {
	svc         *corev1.Service
	host        string
	port        servicePort
	dr          *networkingv1.DestinationRule
	subset      *networking.Subset
	subsetIndex int
	// ref is the object problems with endpoints are reported on; the
	// Service when empty.
	ref ObjectRef
}

// cluster builds one cluster and its load assignment.
func (b *builder) cluster(cs clusterSpec, pods []podEndpoint) {
	subsetName := ""
	var subsetLabels map[string]string
	if cs.subset != nil {
		subsetName, subsetLabels = cs.subset.Name, cs.subset.Labels
	}
	name := clusterName(cs.port.port, cs.port.protocol, subsetName, cs.host)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
			InitialFetchTimeout:   durationpb.New(0),
		}},
		ConnectTimeout: durationpb.New(defaultConnectTimeout),
		LbPolicy:       clusterv3.Cluster_LEAST_REQUEST,
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
			MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
			MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
			MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
			TrackRemaining:     true,
		}}},
		Metadata: clusterMetadata(cs.svc, cs.host, subsetName),
	}
	if cs.port.protocol == "http" && cs.port.http2 {
		c.TypedExtensionProtocolOptions = httpOptions(nil, true, false, nil)
	}
	var ls localitySetting
	if cs.dr != nil {
		var subsetPolicy *networking.TrafficPolicy
		if cs.subset != nil {
			subsetPolicy = cs.subset.TrafficPolicy
		}
		pol := mergePolicy(cs.dr.Spec.TrafficPolicy, subsetPolicy, cs.subsetIndex, uint32(cs.port.port))
		b.applyPolicy(c, cs, pol)
		if pol.lb != nil && pol.lb.LocalityLbSetting != nil {
			ls.lb, ls.path = pol.lb.LocalityLbSetting, pol.lbPath+".localityLbSetting"
		}
		ls.failover = pol.outlier != nil
		b.checkLocalitySetting(drRef(cs.dr), ls)
	}
	ref := cs.ref
	if ref == (ObjectRef{}) {
		ref = ObjectRef{"Service", cs.svc.Namespace, cs.svc.Name}
	}
	la := b.assignment(ref, name, cs.port, subsetLabels, pods)
	b.applyLocality(c, la, ls)
	b.out.Clusters = append(b.out.Clusters, c)
	b.out.Endpoints = append(b.out.Endpoints, la)
}

// clusterMetadata is the "istio" metadata istiod gives a cluster: the
// service it belongs to and the subset, read by telemetry.
func clusterMetadata(svc *corev1.Service, host, subset string) *corev3.Metadata {
	service := structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
		"host":      structpb.NewStringValue(host),
		"name":      structpb.NewStringValue(svc.Name),
		"namespace": structpb.NewStringValue(svc.Namespace),
	}})
	fields := map[string]*structpb.Value{"services": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{service}})}
	if subset != "" {
		fields["subset"] = structpb.NewStringValue(subset)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: fields}}}
}
