package state

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/identity"
)

// NetAddr is an IP on a network: workloads on different networks may share
// an address.
type NetAddr struct {
	Network string
	Addr    netip.Addr
}

func (a NetAddr) String() string { return a.Network + "/" + a.Addr.String() }

// Workload is a validated istio.workload.Workload.
type Workload struct {
	UID, Name, Namespace string
	Addrs                []netip.Addr
	Network              string
	Protocol             workload.TunnelProtocol
	Identity             spiffeid.ID
	Waypoint             *Gateway
	Node                 string
	CanonicalName        string
	CanonicalRevision    string
	WorkloadName         string
	ClusterID            string
	Locality             *workload.Locality
	Healthy              bool
	// Services maps "namespace/hostname" to service port → target port
	// overrides for this workload.
	Services map[string]map[uint16]uint16
	// Policies are the keys ("namespace/name") of the WORKLOAD_SELECTOR
	// policies that select this workload.
	Policies []string
	// WaypointExempt: the pod opted out of waypoints (use-waypoint: none),
	// so the waypoints of the services selecting it do not hold it.
	WaypointExempt bool

	// raw is the wire form, an encoded workload.Address: the decoded
	// message would hold about 900 bytes per workload for config dumps
	// alone (make bench's memory figure). From xDS it is the bytes the
	// control plane sent, shared with what ztunnel persists.
	raw []byte
}

// Raw returns the wire form (for config dumps), decoded anew.
func (w *Workload) Raw() *workload.Workload {
	return decodeRaw(w.raw).GetWorkload()
}

// decodeRaw decodes a raw field; it was validated on the way in.
func decodeRaw(raw []byte) *workload.Address {
	a := &workload.Address{}
	proto.Unmarshal(raw, a)
	return a
}

// encodeRaw is the raw field of a resource that came without its wire
// form (a local file, a caller's message).
func encodeRaw(a *workload.Address) ([]byte, error) {
	raw, err := proto.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return raw, nil
}

// shareUID sets the uid to uid, an equal string, and has the name and
// workload name share it: a pod's uid ends with its name, which is usually
// its workload name, so one string serves the three.
func (w *Workload) shareUID(uid string) {
	w.UID = uid
	if strings.HasSuffix(uid, "/"+w.Name) {
		w.Name = uid[len(uid)-len(w.Name):]
	}
	if w.WorkloadName == w.Name {
		w.WorkloadName = w.Name
	}
}

// HBONE reports whether the workload is in the mesh (reached over HBONE).
func (w *Workload) HBONE() bool { return w.Protocol == workload.TunnelProtocol_HBONE }

// Service is a validated istio.workload.Service.
type Service struct {
	Name, Namespace, Hostname string
	VIPs                      []NetAddr
	// Ports maps service port → target port (0: the workload's override or
	// the service port).
	Ports         map[uint16]uint16
	SANs          []spiffeid.ID
	Waypoint      *Gateway
	LoadBalancing *workload.LoadBalancing
	// Visibility NAMESPACE: only clients of Namespace may reach it.
	Visibility workload.Service_Visibility

	raw []byte // the wire form, an encoded workload.Address (see Workload.raw)
}

// VisibleTo reports whether a client in namespace may resolve and reach
// the service.
func (s *Service) VisibleTo(namespace string) bool {
	return s.Visibility != workload.Service_NAMESPACE || s.Namespace == namespace
}

// Key is the service's resource name, "namespace/hostname".
func (s *Service) Key() string { return s.Namespace + "/" + s.Hostname }

// Raw returns the wire form (for config dumps), decoded anew.
func (s *Service) Raw() *workload.Service {
	return decodeRaw(s.raw).GetService()
}

// Gateway is a waypoint (or network gateway) reference: an address or a
// service hostname, and its HBONE port.
type Gateway struct {
	Addr      NetAddr // valid when the gateway is given by address
	Service   string  // "namespace/hostname" when given by hostname
	HBONEPort uint16
}

func (g *Gateway) String() string {
	if g.Service != "" {
		return fmt.Sprintf("%s:%d", g.Service, g.HBONEPort)
	}
	return fmt.Sprintf("%s:%d", g.Addr, g.HBONEPort)
}

// DefaultHBONEPort is where waypoints and ztunnels accept HBONE.
const DefaultHBONEPort = 15008

// ConvertWorkload validates a wire workload. Errors name the field.
func ConvertWorkload(pb *workload.Workload) (*Workload, error) {
	return convertWorkload(pb, nil, nil)
}

// convertWorkload is ConvertWorkload keeping raw (pb's Address encoded,
// if the caller has it) and sharing repeated values through in (if any).
func convertWorkload(pb *workload.Workload, raw []byte, in *interner) (*Workload, error) {
	if pb.GetUid() == "" {
		return nil, errors.New("uid: empty")
	}
	w := &Workload{
		UID: pb.Uid, Name: pb.Name, Namespace: in.str(pb.Namespace), Network: in.str(pb.Network),
		Protocol: pb.TunnelProtocol, Node: in.str(pb.Node),
		CanonicalName: in.str(pb.CanonicalName), CanonicalRevision: in.str(pb.CanonicalRevision),
		WorkloadName: pb.WorkloadName, ClusterID: in.str(pb.ClusterId), Locality: pb.Locality,
		Healthy:        pb.Status == workload.WorkloadStatus_HEALTHY,
		WaypointExempt: pb.WaypointExempt,
		raw:            raw,
	}
	w.shareUID(pb.Uid)
	var err error
	if w.raw == nil {
		if w.raw, err = encodeRaw(&workload.Address{Type: &workload.Address_Workload{Workload: pb}}); err != nil {
			return nil, err
		}
	}
	if _, ok := workload.TunnelProtocol_name[int32(pb.TunnelProtocol)]; !ok {
		return nil, fmt.Errorf("tunnel_protocol: unknown value %d", pb.TunnelProtocol)
	}
	for i, b := range pb.Addresses {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("addresses[%d]: %d bytes, want 4 or 16", i, len(b))
		}
		if w.Addrs == nil {
			w.Addrs = make([]netip.Addr, 0, len(pb.Addresses))
		}
		w.Addrs = append(w.Addrs, a.Unmap())
	}
	if w.HBONE() {
		// A mesh workload must have an identity we can verify: without one
		// a client could not know whom to expect (fail closed).
		if pb.Namespace == "" {
			return nil, errors.New("namespace: empty on an HBONE workload (its identity needs it)")
		}
		td, sa := pb.TrustDomain, pb.ServiceAccount
		if td == "" {
			td = identity.DefaultTrustDomain
		}
		if sa == "" {
			sa = "default"
		}
		t, err := spiffeid.TrustDomainFromString(td)
		if err != nil {
			return nil, fmt.Errorf("trust_domain: %w", err)
		}
		if _, err := spiffeid.FromSegments(t, pb.Namespace); err != nil {
			return nil, fmt.Errorf("namespace: %w", err)
		}
		if w.Identity, err = identity.WorkloadID(t, pb.Namespace, sa); err != nil {
			return nil, fmt.Errorf("service_account: %w", err)
		}
		w.Identity = in.id(w.Identity)
	}
	if w.Waypoint, err = convertGateway(pb.Waypoint, pb.Network); err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	w.Waypoint = in.gateway(w.Waypoint)
	if len(pb.Services) > 0 {
		w.Services = make(map[string]map[uint16]uint16, len(pb.Services))
	}
	for key, pl := range pb.Services {
		if !validServiceKey(key) {
			return nil, fmt.Errorf("services[%q]: key must be namespace/hostname", key)
		}
		ports, err := convertPorts(pl.GetPorts())
		if err != nil {
			return nil, fmt.Errorf("services[%q].%w", key, err)
		}
		w.Services[key] = ports
	}
	for i, p := range pb.AuthorizationPolicies {
		if !validServiceKey(p) {
			return nil, fmt.Errorf("authorization_policies[%d]: %q is not namespace/name", i, p)
		}
		w.Policies = append(w.Policies, in.str(p))
	}
	w.Services = in.servicesOf(w.Services)
	return w, nil
}

// ConvertService validates a wire service. Errors name the field.
func ConvertService(pb *workload.Service) (*Service, error) {
	return convertService(pb, nil, nil)
}

// convertService is ConvertService as convertWorkload is ConvertWorkload.
func convertService(pb *workload.Service, raw []byte, in *interner) (*Service, error) {
	if pb.GetNamespace() == "" {
		return nil, errors.New("namespace: empty")
	}
	if pb.Hostname == "" {
		return nil, errors.New("hostname: empty")
	}
	s := &Service{Name: pb.Name, Namespace: in.str(pb.Namespace), Hostname: pb.Hostname, LoadBalancing: pb.LoadBalancing, Visibility: pb.Visibility, raw: raw}
	if _, ok := workload.Service_Visibility_name[int32(pb.Visibility)]; !ok {
		// An unknown scope may be narrower than any we know: refuse the
		// service rather than publish it to everyone.
		return nil, fmt.Errorf("visibility: unknown value %d", pb.Visibility)
	}
	var err error
	if s.raw == nil {
		if s.raw, err = encodeRaw(&workload.Address{Type: &workload.Address_Service{Service: pb}}); err != nil {
			return nil, err
		}
	}
	for i, na := range pb.Addresses {
		a, ok := netip.AddrFromSlice(na.GetAddress())
		if !ok {
			return nil, fmt.Errorf("addresses[%d].address: %d bytes, want 4 or 16", i, len(na.GetAddress()))
		}
		s.VIPs = append(s.VIPs, NetAddr{Network: in.str(na.Network), Addr: a.Unmap()})
	}
	if s.Ports, err = convertPorts(pb.Ports); err != nil {
		return nil, err
	}
	for i, san := range pb.SubjectAltNames {
		id, err := spiffeid.FromString(san)
		if err != nil {
			return nil, fmt.Errorf("subject_alt_names[%d]: %w", i, err)
		}
		s.SANs = append(s.SANs, in.id(id))
	}
	network := "" // a waypoint given by bare address is on the service's network
	if len(s.VIPs) > 0 {
		network = s.VIPs[0].Network
	}
	if s.Waypoint, err = convertGateway(pb.Waypoint, network); err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	s.Waypoint = in.gateway(s.Waypoint)
	if lb := pb.LoadBalancing; lb != nil {
		if _, ok := workload.LoadBalancing_Mode_name[int32(lb.Mode)]; !ok {
			return nil, fmt.Errorf("load_balancing.mode: unknown value %d", lb.Mode)
		}
		if _, ok := workload.LoadBalancing_HealthPolicy_name[int32(lb.HealthPolicy)]; !ok {
			return nil, fmt.Errorf("load_balancing.health_policy: unknown value %d", lb.HealthPolicy)
		}
		for i, sc := range lb.RoutingPreference {
			if _, ok := workload.LoadBalancing_Scope_name[int32(sc)]; !ok || sc == workload.LoadBalancing_UNSPECIFIED_SCOPE {
				return nil, fmt.Errorf("load_balancing.routing_preference[%d]: invalid scope %d", i, sc)
			}
		}
	}
	return s, nil
}

func convertPorts(pbs []*workload.Port) (map[uint16]uint16, error) {
	ports := make(map[uint16]uint16, len(pbs))
	for i, p := range pbs {
		if p.ServicePort == 0 || p.ServicePort > 65535 {
			return nil, fmt.Errorf("ports[%d].service_port: %d out of range 1-65535", i, p.ServicePort)
		}
		if p.TargetPort > 65535 {
			return nil, fmt.Errorf("ports[%d].target_port: %d out of range 0-65535", i, p.TargetPort)
		}
		ports[uint16(p.ServicePort)] = uint16(p.TargetPort)
	}
	return ports, nil
}

func convertGateway(g *workload.GatewayAddress, network string) (*Gateway, error) {
	if g == nil {
		return nil, nil
	}
	gw := &Gateway{HBONEPort: DefaultHBONEPort}
	if g.HboneMtlsPort != 0 {
		if g.HboneMtlsPort > 65535 {
			return nil, fmt.Errorf("hbone_mtls_port: %d out of range", g.HboneMtlsPort)
		}
		gw.HBONEPort = uint16(g.HboneMtlsPort)
	}
	switch d := g.Destination.(type) {
	case *workload.GatewayAddress_Address:
		a, ok := netip.AddrFromSlice(d.Address.GetAddress())
		if !ok {
			return nil, fmt.Errorf("address.address: %d bytes, want 4 or 16", len(d.Address.GetAddress()))
		}
		n := d.Address.Network
		if n == "" {
			n = network
		}
		gw.Addr = NetAddr{Network: n, Addr: a.Unmap()}
	case *workload.GatewayAddress_Hostname:
		if d.Hostname.GetNamespace() == "" || d.Hostname.GetHostname() == "" {
			return nil, errors.New("hostname: needs namespace and hostname")
		}
		gw.Service = d.Hostname.Namespace + "/" + d.Hostname.Hostname
	default:
		return nil, errors.New("destination: neither address nor hostname")
	}
	return gw, nil
}

func validServiceKey(k string) bool {
	ns, rest, ok := strings.Cut(k, "/")
	return ok && ns != "" && rest != "" && !strings.Contains(rest, "/")
}
