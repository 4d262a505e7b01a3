package config

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// EndpointMetadataKey is the filter_metadata key under which zmeshd gives
// each endpoint the workload's SPIFFE identity ("identity") and labels
// ("labels", a struct of strings).
const EndpointMetadataKey = "zmesh"

// maxPriority is Envoy's bound on LocalityLbEndpoints.priority.
const maxPriority = 128

// CompileAssignments validates load assignments and compiles them, keyed
// by cluster_name, which must be unique. Errors are *NackErrors whose
// Resource is `endpoints "<cluster_name>"`.
func CompileAssignments(las []*endpointv3.ClusterLoadAssignment) (map[string]*upstream.Assignment, error) {
	out := make(map[string]*upstream.Assignment, len(las))
	for i, la := range las {
		a, err := CompileAssignment(la)
		if err != nil {
			return nil, err
		}
		if _, dup := out[a.ClusterName]; dup {
			return nil, &NackError{Resource: fmt.Sprintf("endpoints %q", a.ClusterName), Path: "cluster_name",
				Problem: fmt.Sprintf("duplicate cluster_name (assignments[%d])", i)}
		}
		out[a.ClusterName] = a
	}
	return out, nil
}

// CompileAssignment validates one ClusterLoadAssignment and compiles it.
// Every endpoint must carry a SPIFFE identity in its metadata: the waypoint
// never dials a mesh endpoint it cannot authenticate. The one exception is
// said explicitly: an endpoint whose metadata has tunnel "none" and no
// identity is outside the mesh and is dialled in plaintext.
func CompileAssignment(la *endpointv3.ClusterLoadAssignment) (*upstream.Assignment, error) {
	a, err := compileAssignment(la)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = fmt.Sprintf("endpoints %q", la.GetClusterName())
		}
		return nil, err
	}
	return a, nil
}

func compileAssignment(la *endpointv3.ClusterLoadAssignment) (*upstream.Assignment, error) {
	if la == nil {
		return nil, nackf("", "no cluster load assignment")
	}
	if err := checkSupported(la.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if la.GetClusterName() == "" {
		return nil, nackf("cluster_name", "required")
	}
	out := &upstream.Assignment{ClusterName: la.GetClusterName(), OverprovisioningFactor: upstream.DefaultOverprovisioning}
	if v := la.GetPolicy().GetOverprovisioningFactor(); v != nil {
		if v.GetValue() == 0 {
			return nil, nackf("policy.overprovisioning_factor", "must be greater than 0")
		}
		out.OverprovisioningFactor = v.GetValue()
	}
	// One address is one workload with one identity: the same address
	// twice, perhaps with two identities, would leave it open which one the
	// waypoint expects.
	seen := map[netip.AddrPort]string{}
	for i, lle := range la.GetEndpoints() {
		path := fmt.Sprintf("endpoints[%d]", i)
		if lle.GetPriority() > maxPriority {
			return nil, nackf(path+".priority", "%d: must be at most %d", lle.GetPriority(), maxPriority)
		}
		loc := upstream.Locality{
			Region:  lle.GetLocality().GetRegion(),
			Zone:    lle.GetLocality().GetZone(),
			SubZone: lle.GetLocality().GetSubZone(),
		}
		if w := lle.GetLoadBalancingWeight(); w != nil {
			if w.GetValue() == 0 {
				return nil, nackf(path+".load_balancing_weight", "must be at least 1")
			}
			loc.Weight = w.GetValue()
		}
		for j, lbe := range lle.GetLbEndpoints() {
			ep, err := endpoint(fmt.Sprintf("%s.lb_endpoints[%d]", path, j), lbe)
			if err != nil {
				return nil, err
			}
			if prev, dup := seen[ep.Addr]; dup {
				return nil, nackf(fmt.Sprintf("%s.lb_endpoints[%d].endpoint.address", path, j), "%s already listed at %s", ep.Addr, prev)
			}
			seen[ep.Addr] = fmt.Sprintf("%s.lb_endpoints[%d]", path, j)
			loc.Endpoints = append(loc.Endpoints, ep)
		}
		for int(lle.GetPriority()) >= len(out.Priorities) {
			out.Priorities = append(out.Priorities, nil)
		}
		out.Priorities[lle.GetPriority()] = append(out.Priorities[lle.GetPriority()], loc)
	}
	return out, nil
}

func endpoint(path string, lbe *endpointv3.LbEndpoint) (upstream.Endpoint, error) {
	out := upstream.Endpoint{Weight: 1}
	e := lbe.GetEndpoint()
	if e == nil {
		return out, nackf(path+".endpoint", "required")
	}
	sa := e.GetAddress().GetSocketAddress()
	if sa == nil {
		return out, nackf(path+".endpoint.address.socket_address", "required")
	}
	apath := path + ".endpoint.address.socket_address"
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return out, nackf(apath+".protocol", "%s not supported (only TCP)", sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || ip.Zone() != "" {
		return out, nackf(apath+".address", "%q is not an IP address", sa.GetAddress())
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		return out, nackf(apath+".address", "%s cannot be an endpoint", ip)
	}
	port := sa.GetPortValue()
	if port == 0 || port > 65535 {
		return out, nackf(apath+".port_value", "%d: must be in [1, 65535]", port)
	}
	out.Addr = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	switch h := lbe.GetHealthStatus(); h {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
		out.Health = upstream.Healthy
	case corev3.HealthStatus_DEGRADED:
		out.Health = upstream.Degraded
	case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
		out.Health = upstream.Unhealthy
	default:
		return out, nackf(path+".health_status", "unknown value %d", h)
	}
	if w := lbe.GetLoadBalancingWeight(); w != nil {
		if w.GetValue() == 0 {
			return out, nackf(path+".load_balancing_weight", "must be at least 1")
		}
		out.Weight = w.GetValue()
	}
	mpath := path + ".metadata.filter_metadata[" + fmt.Sprintf("%q", EndpointMetadataKey) + "]"
	if out.Identity, out.Labels, out.Plaintext, err = endpointMetadata(mpath, lbe.GetMetadata().GetFilterMetadata()[EndpointMetadataKey]); err != nil {
		return out, err
	}
	if out.Plaintext && !plaintextReachable(out.Addr.Addr()) {
		// Dialled from the waypoint's own network namespace, such an
		// address would reach the waypoint itself (its admin port) or its
		// node rather than a server outside the mesh.
		return out, nackf(apath+".address", "%s cannot be a plaintext endpoint (loopback or link-local)", ip)
	}
	if out.Workload, err = istioEndpointMetadata(path+`.metadata.filter_metadata["istio"]`,
		lbe.GetMetadata().GetFilterMetadata()["istio"]); err != nil {
		return out, err
	}
	return out, nil
}

// istioEndpointMetadata reads what names an endpoint's workload in
// telemetry: istiod's "workload" string,
// "<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>",
// and zmeshd's "app" and "version". It only labels metrics, so other keys
// are left alone; a known key of the wrong shape is refused.
func istioEndpointMetadata(path string, s *structpb.Struct) (upstream.WorkloadInfo, error) {
	var w upstream.WorkloadInfo
	str := func(key string) (string, error) {
		v, ok := s.GetFields()[key]
		if !ok {
			return "", nil
		}
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return "", nackf(path+"."+key, "must be a string")
		}
		return sv.StringValue, nil
	}
	wl, err := str("workload")
	if err != nil {
		return w, err
	}
	if wl != "" {
		parts := strings.Split(wl, ";")
		if len(parts) != 5 {
			return w, nackf(path+".workload", "%q: want <workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>", wl)
		}
		w.Name, w.Namespace, w.CanonicalService, w.CanonicalRevision, w.Cluster = parts[0], parts[1], parts[2], parts[3], parts[4]
	}
	if w.App, err = str("app"); err != nil {
		return w, err
	}
	if w.Version, err = str("version"); err != nil {
		return w, err
	}
	return w, nil
}

// Values of the "tunnel" field of the endpoint metadata: how the waypoint
// reaches the endpoint.
const (
	// TunnelHBONE (the default): HBONE to the endpoint's port 15008,
	// requiring its identity.
	TunnelHBONE = "hbone"
	// TunnelNone: plain TCP to the endpoint's address, for a server
	// outside the mesh; the endpoint then has no identity.
	TunnelNone = "none"
)

// plaintextReachable reports whether the waypoint may dial ip in
// plaintext for a ServiceEntry endpoint.
func plaintextReachable(ip netip.Addr) bool {
	return !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() && !ip.IsInterfaceLocalMulticast()
}

// endpointMetadata reads the identity, labels and tunnel zmeshd gives an
// endpoint. Unlike other metadata this has behaviour (it decides whom the
// waypoint trusts, and whether it encrypts), so every field in it is
// checked and an unknown one refused. An endpoint without a tunnel
// (tunnel "none") is dialled in plaintext and must not name an identity:
// one that did would be ambiguous about what the waypoint verifies.
func endpointMetadata(path string, s *structpb.Struct) (string, map[string]string, bool, error) {
	id, labels, tunnel, err := endpointFields(path, s)
	if err != nil {
		return "", nil, false, err
	}
	switch tunnel {
	case "", TunnelHBONE:
		if id == "" {
			return "", nil, false, nackf(path+".identity", "required: the endpoint's SPIFFE identity")
		}
		return id, labels, false, nil
	case TunnelNone:
		if id != "" {
			return "", nil, false, nackf(path+".identity", "set on an endpoint with tunnel %q: a plaintext endpoint proves no identity", TunnelNone)
		}
		return "", labels, true, nil
	default:
		return "", nil, false, nackf(path+".tunnel", "%q not supported (only %q or %q)", tunnel, TunnelHBONE, TunnelNone)
	}
}

func endpointFields(path string, s *structpb.Struct) (string, map[string]string, string, error) {
	if s == nil {
		return "", nil, "", nackf(path, "required: the endpoint's SPIFFE identity")
	}
	var id, tunnel string
	var labels map[string]string
	for _, k := range sortedKeys(s.GetFields()) {
		v := s.GetFields()[k]
		switch k {
		case "identity":
			sv, ok := v.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return "", nil, "", nackf(path+".identity", "must be a string")
			}
			parsed, err := spiffeid.FromString(sv.StringValue)
			if err != nil {
				return "", nil, "", nackf(path+".identity", "%q is not a SPIFFE ID: %v", sv.StringValue, err)
			}
			id = parsed.String()
		case "labels":
			st, ok := v.GetKind().(*structpb.Value_StructValue)
			if !ok {
				return "", nil, "", nackf(path+".labels", "must be a struct of strings")
			}
			labels = make(map[string]string, len(st.StructValue.GetFields()))
			for _, lk := range sortedKeys(st.StructValue.GetFields()) {
				lv := st.StructValue.GetFields()[lk]
				sv, ok := lv.GetKind().(*structpb.Value_StringValue)
				if !ok {
					return "", nil, "", nackf(fmt.Sprintf("%s.labels[%q]", path, lk), "must be a string")
				}
				labels[lk] = sv.StringValue
			}
		case "tunnel":
			sv, ok := v.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return "", nil, "", nackf(path+".tunnel", "must be a string")
			}
			tunnel = sv.StringValue
		default:
			return "", nil, "", nackf(path+"."+k, "not supported")
		}
	}
	return id, labels, tunnel, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
