package l7

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
)

// Kubernetes' and Istio's topology labels: a node's give its pods their
// locality; failoverPriority may name them.
const (
	labelRegion  = "topology.kubernetes.io/region"
	labelZone    = "topology.kubernetes.io/zone"
	labelSubzone = "topology.istio.io/subzone"
	labelCluster = "topology.istio.io/cluster"
	labelNetwork = "topology.istio.io/network"
)

// NodeLocality is a node's locality from its topology labels; nil when it
// names no region.
func NodeLocality(n *corev1.Node) *corev3.Locality {
	if n == nil || n.Labels[labelRegion] == "" {
		return nil
	}
	return &corev3.Locality{Region: n.Labels[labelRegion], Zone: n.Labels[labelZone], SubZone: n.Labels[labelSubzone]}
}

// PodLocality is a pod's locality as Istio reads it: its istio-locality
// label ("region.zone.subzone"), else its node's topology labels.
func PodLocality(p *corev1.Pod, node *corev1.Node) *corev3.Locality {
	if l := localityLabel(p); l != nil {
		return l
	}
	return NodeLocality(node)
}

// LocalityString is l as "region/zone/subzone", Istio's form; "" for nil.
func LocalityString(l *corev3.Locality) string {
	if l == nil {
		return ""
	}
	return l.GetRegion() + "/" + l.GetZone() + "/" + l.GetSubZone()
}

// localitySetting is what decides a cluster's priorities and locality
// weights relative to the waypoint.
type localitySetting struct {
	lb   *networking.LocalityLoadBalancerSetting
	path string
	// failover: the cluster has outlier detection. Istio applies failover
	// (by locality or failoverPriority) only then: without ejections the
	// proxy would never leave priority 0 for an endpoint that is down.
	failover bool
}

// applyLocality prioritises and weights la's endpoints relative to the
// waypoint's locality, as istiod does for a proxy: distribute, when a rule
// matches the waypoint, weights the localities it names and drops the
// others; otherwise, with outlier detection, failoverPriority orders
// endpoints by the topology labels they share with the waypoint, else
// endpoints in the waypoint's region/zone/subzone come first, then its
// zone, its region, the failover region, and the rest. A waypoint with no
// locality, or a setting that disables locality load balancing, leaves la
// as it is.
func (b *builder) applyLocality(c *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment, ls localitySetting) {
	loc := b.opts.Locality
	if ls.lb != nil && ls.lb.Enabled != nil && !ls.lb.Enabled.Value {
		return
	}
	if loc == nil || loc.GetRegion() == "" || len(la.Endpoints) == 0 {
		return
	}
	lb := ls.lb
	switch {
	case len(lb.GetDistribute()) > 0:
		if applyDistribute(loc, la, lb.GetDistribute()) {
			if c.CommonLbConfig == nil {
				c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
			}
			c.CommonLbConfig.LocalityConfigSpecifier = &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig_{
				LocalityWeightedLbConfig: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig{}}
		}
	case !ls.failover:
	case len(lb.GetFailoverPriority()) > 0:
		b.applyFailoverPriority(la, lb.GetFailoverPriority())
	default:
		applyFailover(loc, la, lb.GetFailover())
	}
}

// checkLocalitySetting reports what of a localityLbSetting the waypoint
// does not honour; once per DestinationRule, whatever the waypoint's
// locality.
func (b *builder) checkLocalitySetting(ref ObjectRef, ls localitySetting) {
	lb := ls.lb
	if lb == nil || (lb.Enabled != nil && !lb.Enabled.Value) {
		return
	}
	if len(lb.Distribute) > 0 && (len(lb.Failover) > 0 || len(lb.FailoverPriority) > 0) {
		b.problem(ref, ls.path, "distribute and failover are exclusive (Istio's rule); failover is ignored")
	}
	if len(lb.Distribute) == 0 && (len(lb.Failover) > 0 || len(lb.FailoverPriority) > 0) && !ls.failover {
		b.problem(ref, ls.path, "failover needs outlierDetection (Istio's rule: without ejections the waypoint never leaves the first priority); ignored")
	}
	if len(lb.FailoverPriority) > 0 && len(lb.Failover) > 0 {
		b.problem(ref, ls.path+".failover", "ignored when failoverPriority is set")
	}
	for i, k := range lb.FailoverPriority {
		if !topologyKey(k) {
			b.problem(ref, fmt.Sprintf("%s.failoverPriority[%d]", ls.path, i), fmt.Sprintf("%q: only topology labels (%s, %s, %s, %s, %s) are supported; it orders nothing", k,
				labelRegion, labelZone, labelSubzone, labelCluster, labelNetwork))
		}
	}
}

func topologyKey(k string) bool {
	switch k {
	case labelRegion, labelZone, labelSubzone, labelCluster, labelNetwork:
		return true
	}
	return false
}

// localityMatch is Istio's: rule is "region[/zone[/subzone]]", each part
// "*" for any; a missing zone or subzone matches any.
func localityMatch(l *corev3.Locality, rule string) bool {
	parts := strings.SplitN(rule, "/", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	region := parts[0] == "*" || l.GetRegion() == parts[0]
	zone := parts[1] == "*" || parts[1] == "" || l.GetZone() == parts[1]
	subzone := parts[2] == "*" || parts[2] == "" || l.GetSubZone() == parts[2]
	return region && zone && subzone
}

// applyDistribute applies the first rule whose from matches loc: each
// locality group its to names gets that share, split over the groups a
// wildcard matches by their weights; groups no entry names get no
// endpoints. It reports whether a rule applied.
func applyDistribute(loc *corev3.Locality, la *endpointv3.ClusterLoadAssignment, rules []*networking.LocalityLoadBalancerSetting_Distribute) bool {
	for _, rule := range rules {
		if rule == nil || !localityMatch(loc, rule.From) {
			continue
		}
		unmatched := map[int]bool{}
		for i := range la.Endpoints {
			unmatched[i] = true
		}
		for _, to := range slices.Sorted(mapsKeys(rule.To)) {
			share := rule.To[to]
			matched := map[int]uint32{}
			var total uint32
			for i, g := range la.Endpoints {
				if !unmatched[i] || !localityMatch(g.Locality, to) {
					continue
				}
				delete(unmatched, i)
				w := uint32(1)
				if g.LoadBalancingWeight != nil {
					w = g.LoadBalancingWeight.Value
				}
				matched[i] = w
				total += w
			}
			for i, w := range matched {
				if v := float64(w) * float64(share) / float64(total); v > 0 {
					la.Endpoints[i].LoadBalancingWeight = wrapperspb.UInt32(uint32(math.Ceil(v)))
				}
			}
		}
		for i := range unmatched {
			la.Endpoints[i].LbEndpoints = nil
		}
		// Envoy's rule: a locality with no weight gets no traffic under
		// locality-weighted balancing; drop what is left empty.
		la.Endpoints = slices.DeleteFunc(la.Endpoints, func(g *endpointv3.LocalityLbEndpoints) bool {
			return len(g.LbEndpoints) == 0 || g.LoadBalancingWeight == nil
		})
		return true
	}
	return false
}

// applyFailover sets each locality group's priority: 0 for loc's subzone,
// 1 its zone, 2 its region, 3 a region failover names for loc's region,
// 4 the rest; then closes the gaps, Envoy's priorities being 0..N.
func applyFailover(loc *corev3.Locality, la *endpointv3.ClusterLoadAssignment, failover []*networking.LocalityLoadBalancerSetting_Failover) {
	for _, g := range la.Endpoints {
		p := uint32(4)
		switch {
		case g.Locality.GetRegion() == loc.GetRegion() && g.Locality.GetZone() == loc.GetZone() && g.Locality.GetSubZone() == loc.GetSubZone():
			p = 0
		case g.Locality.GetRegion() == loc.GetRegion() && g.Locality.GetZone() == loc.GetZone():
			p = 1
		case g.Locality.GetRegion() == loc.GetRegion():
			p = 2
		default:
			for _, f := range failover {
				if f != nil && f.From == loc.GetRegion() && g.Locality != nil && g.Locality.Region == f.To {
					p = 3
					break
				}
			}
		}
		g.Priority = p
	}
	compactPriorities(la)
}

// applyFailoverPriority regroups la's endpoints by priority: the number of
// keys from the first one an endpoint does not share with the waypoint
// (0 when it shares them all). Keys are topology labels, compared between
// the waypoint's locality, cluster and network and the endpoint's.
func (b *builder) applyFailoverPriority(la *endpointv3.ClusterLoadAssignment, keys []string) {
	proxy := b.topologyLabels(b.opts.Locality)
	type groupKey struct {
		locality string
		priority uint32
	}
	groups := map[groupKey]*endpointv3.LocalityLbEndpoints{}
	var out []*endpointv3.LocalityLbEndpoints
	for _, g := range la.Endpoints {
		ep := b.topologyLabels(g.Locality)
		for _, lbe := range g.LbEndpoints {
			p := uint32(0)
			for j, k := range keys {
				if !topologyKey(k) {
					continue
				}
				if proxy[k] != ep[k] {
					p = uint32(len(keys) - j)
					break
				}
			}
			key := groupKey{LocalityString(g.Locality), p}
			ng := groups[key]
			if ng == nil {
				ng = &endpointv3.LocalityLbEndpoints{Locality: g.Locality, LoadBalancingWeight: g.LoadBalancingWeight, Priority: p}
				groups[key] = ng
				out = append(out, ng)
			}
			ng.LbEndpoints = append(ng.LbEndpoints, lbe)
		}
	}
	la.Endpoints = out
	compactPriorities(la)
}

// topologyLabels are the topology labels of a workload in locality l of
// this mesh's cluster and network.
func (b *builder) topologyLabels(l *corev3.Locality) map[string]string {
	return map[string]string{
		labelRegion: l.GetRegion(), labelZone: l.GetZone(), labelSubzone: l.GetSubZone(),
		labelCluster: b.opts.Mesh.ClusterID, labelNetwork: b.opts.Mesh.Network,
	}
}

// compactPriorities renumbers the priorities in use 0, 1, … in order and
// sorts the groups by priority, keeping their order within one.
func compactPriorities(la *endpointv3.ClusterLoadAssignment) {
	used := map[uint32]bool{}
	for _, g := range la.Endpoints {
		used[g.Priority] = true
	}
	order := slices.Sorted(mapsKeys(used))
	for _, g := range la.Endpoints {
		i, _ := slices.BinarySearch(order, g.Priority)
		g.Priority = uint32(i)
	}
	slices.SortStableFunc(la.Endpoints, func(x, y *endpointv3.LocalityLbEndpoints) int { return cmp.Compare(x.Priority, y.Priority) })
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
