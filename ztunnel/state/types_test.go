package state_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// validWorkload is an HBONE workload every error case below breaks in one
// field, so that the error can only come from that field.
func validWorkload() *workload.Workload {
	return &workload.Workload{
		Uid:            "cluster1//Pod/ns/a",
		Name:           "a",
		Namespace:      "ns",
		Addresses:      [][]byte{ip("10.0.0.1"), ip("fd00::1")},
		TunnelProtocol: workload.TunnelProtocol_HBONE,
		ServiceAccount: "sa",
		Waypoint:       gwAddr("10.0.0.9"),
		Services: map[string]*workload.PortList{
			"ns/svc.ns.svc.cluster.local": {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}},
		},
		AuthorizationPolicies: []string{"ns/allow", "istio-system/deny"},
	}
}

func validService() *workload.Service {
	return &workload.Service{
		Name:            "svc",
		Namespace:       "ns",
		Hostname:        "svc.ns.svc.cluster.local",
		Addresses:       []*workload.NetworkAddress{{Address: ip("10.96.0.10")}},
		Ports:           []*workload.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443}},
		SubjectAltNames: []string{"spiffe://cluster.local/ns/ns/sa/sa"},
		Waypoint:        gwHost("ns", "waypoint.ns.svc.cluster.local"),
		LoadBalancing: &workload.LoadBalancing{
			RoutingPreference: []workload.LoadBalancing_Scope{workload.LoadBalancing_NODE, workload.LoadBalancing_ZONE},
			Mode:              workload.LoadBalancing_FAILOVER,
		},
	}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func gwAddr(s string) *workload.GatewayAddress {
	return &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{
		Address: &workload.NetworkAddress{Address: ip(s)},
	}}
}

func gwHost(ns, host string) *workload.GatewayAddress {
	return &workload.GatewayAddress{Destination: &workload.GatewayAddress_Hostname{
		Hostname: &workload.NamespacedHostname{Namespace: ns, Hostname: host},
	}}
}

func TestConvertWorkloadErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(w *workload.Workload)
		want   string // the error's prefix: the field, then what is wrong
	}{
		{"no uid", func(w *workload.Workload) { w.Uid = "" }, "uid: empty"},
		{"unknown tunnel protocol", func(w *workload.Workload) { w.TunnelProtocol = 9 }, "tunnel_protocol: unknown value 9"},
		{"address of 3 bytes", func(w *workload.Workload) { w.Addresses = append(w.Addresses, []byte{1, 2, 3}) }, "addresses[2]: 3 bytes, want 4 or 16"},
		{"empty address", func(w *workload.Workload) { w.Addresses[0] = nil }, "addresses[0]: 0 bytes, want 4 or 16"},
		{"HBONE without namespace", func(w *workload.Workload) { w.Namespace = "" }, "namespace: empty on an HBONE workload"},
		{"HBONE namespace not a SPIFFE segment", func(w *workload.Workload) { w.Namespace = "a/b" }, "namespace: "},
		{"bad trust domain", func(w *workload.Workload) { w.TrustDomain = "Not A Domain" }, "trust_domain: "},
		{"bad service account", func(w *workload.Workload) { w.ServiceAccount = "a/b" }, "service_account: "},
		{"waypoint without destination", func(w *workload.Workload) { w.Waypoint = &workload.GatewayAddress{} }, "waypoint: destination: neither address nor hostname"},
		{"waypoint address of 5 bytes", func(w *workload.Workload) {
			w.Waypoint.GetAddress().Address = []byte{1, 2, 3, 4, 5}
		}, "waypoint: address.address: 5 bytes, want 4 or 16"},
		{"waypoint hostname without namespace", func(w *workload.Workload) { w.Waypoint = gwHost("", "wp") }, "waypoint: hostname: needs namespace and hostname"},
		{"waypoint hostname without hostname", func(w *workload.Workload) { w.Waypoint = gwHost("ns", "") }, "waypoint: hostname: needs namespace and hostname"},
		{"waypoint port too big", func(w *workload.Workload) { w.Waypoint.HboneMtlsPort = 65536 }, "waypoint: hbone_mtls_port: 65536 out of range"},
		{"services key without namespace", func(w *workload.Workload) {
			w.Services["svc.ns.svc.cluster.local"] = &workload.PortList{}
		}, `services["svc.ns.svc.cluster.local"]: key must be namespace/hostname`},
		{"services key with two slashes", func(w *workload.Workload) { w.Services["a/b/c"] = &workload.PortList{} }, `services["a/b/c"]: key must be namespace/hostname`},
		{"services service port 0", func(w *workload.Workload) {
			w.Services["ns/svc.ns.svc.cluster.local"].Ports[0].ServicePort = 0
		}, `services["ns/svc.ns.svc.cluster.local"].ports[0].service_port: 0 out of range 1-65535`},
		{"services target port too big", func(w *workload.Workload) {
			w.Services["ns/svc.ns.svc.cluster.local"].Ports = append(w.Services["ns/svc.ns.svc.cluster.local"].Ports, &workload.Port{ServicePort: 81, TargetPort: 65536})
		}, `services["ns/svc.ns.svc.cluster.local"].ports[1].target_port: 65536 out of range 0-65535`},
		{"policy not namespace/name", func(w *workload.Workload) { w.AuthorizationPolicies[1] = "deny" }, `authorization_policies[1]: "deny" is not namespace/name`},
	}
	if _, err := state.ConvertWorkload(validWorkload()); err != nil {
		t.Fatalf("the valid workload every case starts from is rejected: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pb := validWorkload()
			tt.break_(pb)
			w, err := state.ConvertWorkload(pb)
			if err == nil {
				t.Fatalf("ConvertWorkload accepted it: %+v", w)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("ConvertWorkload error:\n got: %v\nwant: %s…", err, tt.want)
			}
		})
	}
}

func TestConvertServiceErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(s *workload.Service)
		want   string
	}{
		{"no namespace", func(s *workload.Service) { s.Namespace = "" }, "namespace: empty"},
		{"no hostname", func(s *workload.Service) { s.Hostname = "" }, "hostname: empty"},
		{"VIP of 5 bytes", func(s *workload.Service) {
			s.Addresses = append(s.Addresses, &workload.NetworkAddress{Address: []byte{1, 2, 3, 4, 5}})
		}, "addresses[1].address: 5 bytes, want 4 or 16"},
		{"nil VIP", func(s *workload.Service) { s.Addresses[0] = nil }, "addresses[0].address: 0 bytes, want 4 or 16"},
		{"service port 0", func(s *workload.Service) { s.Ports[1].ServicePort = 0 }, "ports[1].service_port: 0 out of range 1-65535"},
		{"service port too big", func(s *workload.Service) { s.Ports[0].ServicePort = 70000 }, "ports[0].service_port: 70000 out of range 1-65535"},
		{"target port too big", func(s *workload.Service) { s.Ports[0].TargetPort = 65536 }, "ports[0].target_port: 65536 out of range 0-65535"},
		{"SAN not SPIFFE", func(s *workload.Service) { s.SubjectAltNames = append(s.SubjectAltNames, "svc.example.com") }, "subject_alt_names[1]: "},
		{"waypoint without destination", func(s *workload.Service) { s.Waypoint = &workload.GatewayAddress{HboneMtlsPort: 15008} }, "waypoint: destination: neither address nor hostname"},
		{"waypoint hostname without namespace", func(s *workload.Service) { s.Waypoint = gwHost("", "wp") }, "waypoint: hostname: needs namespace and hostname"},
		{"unknown load balancing mode", func(s *workload.Service) { s.LoadBalancing.Mode = 7 }, "load_balancing.mode: unknown value 7"},
		{"unspecified routing scope", func(s *workload.Service) {
			s.LoadBalancing.RoutingPreference[1] = workload.LoadBalancing_UNSPECIFIED_SCOPE
		}, "load_balancing.routing_preference[1]: invalid scope 0"},
		{"unknown routing scope", func(s *workload.Service) { s.LoadBalancing.RoutingPreference[0] = 99 }, "load_balancing.routing_preference[0]: invalid scope 99"},
		{"unknown health policy", func(s *workload.Service) { s.LoadBalancing.HealthPolicy = 5 }, "load_balancing.health_policy: unknown value 5"},
		{"unknown visibility", func(s *workload.Service) { s.Visibility = 4 }, "visibility: unknown value 4"},
	}
	if _, err := state.ConvertService(validService()); err != nil {
		t.Fatalf("the valid service every case starts from is rejected: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pb := validService()
			tt.break_(pb)
			s, err := state.ConvertService(pb)
			if err == nil {
				t.Fatalf("ConvertService accepted it: %+v", s)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("ConvertService error:\n got: %v\nwant: %s…", err, tt.want)
			}
		})
	}
}

func TestConvertNilIsAnError(t *testing.T) {
	if _, err := state.ConvertWorkload(nil); err == nil {
		t.Error("ConvertWorkload(nil) succeeded")
	}
	if _, err := state.ConvertService(nil); err == nil {
		t.Error("ConvertService(nil) succeeded")
	}
}

func TestConvertWorkloadDefaults(t *testing.T) {
	pb := validWorkload()
	pb.Network = "net1"
	pb.ServiceAccount = ""
	pb.Addresses = [][]byte{ip("::ffff:10.0.0.1"), ip("fd00::1")}
	pb.Status = workload.WorkloadStatus_UNHEALTHY
	w, err := state.ConvertWorkload(pb)
	if err != nil {
		t.Fatal(err)
	}
	if want := identity.MustWorkloadID("cluster.local", "ns", "default"); w.Identity != want {
		t.Errorf("identity = %v, want %v (default trust domain and service account)", w.Identity, want)
	}
	if want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}; !slices.Equal(w.Addrs, want) {
		t.Errorf("addresses = %v, want %v (IPv4-mapped unmapped)", w.Addrs, want)
	}
	wantWP := state.Gateway{Addr: state.NetAddr{Network: "net1", Addr: netip.MustParseAddr("10.0.0.9")}, HBONEPort: 15008}
	if w.Waypoint == nil || *w.Waypoint != wantWP {
		t.Errorf("waypoint = %+v, want %+v (the workload's network, port 15008)", w.Waypoint, wantWP)
	}
	if w.Healthy {
		t.Error("an UNHEALTHY workload converted as healthy")
	}
	if !w.HBONE() {
		t.Error("HBONE() = false for an HBONE workload")
	}
	if got := w.Services["ns/svc.ns.svc.cluster.local"][80]; got != 8080 {
		t.Errorf("services port 80 → %d, want 8080", got)
	}
	if !proto.Equal(w.Raw(), pb) {
		t.Error("Raw() is not the wire form")
	}

	plain, err := state.ConvertWorkload(&workload.Workload{Uid: "vm", Addresses: [][]byte{ip("192.168.1.1")}})
	if err != nil {
		t.Fatalf("a plain workload needs no namespace or identity: %v", err)
	}
	if !plain.Identity.IsZero() || plain.HBONE() || !plain.Healthy {
		t.Errorf("plain workload: identity %v, HBONE %v, healthy %v; want none, false, true", plain.Identity, plain.HBONE(), plain.Healthy)
	}
}

func TestConvertServiceKeepsFields(t *testing.T) {
	pb := validService()
	pb.Addresses = append(pb.Addresses, &workload.NetworkAddress{Network: "net2", Address: ip("::ffff:10.96.0.11")})
	pb.Waypoint.HboneMtlsPort = 15009
	pb.Visibility = workload.Service_NAMESPACE
	s, err := state.ConvertService(pb)
	if err != nil {
		t.Fatal(err)
	}
	if s.Visibility != workload.Service_NAMESPACE || !s.VisibleTo("ns") || s.VisibleTo("other") {
		t.Errorf("visibility %v: visible to ns %v, to other %v; want NAMESPACE, true, false", s.Visibility, s.VisibleTo("ns"), s.VisibleTo("other"))
	}
	if s.Key() != "ns/svc.ns.svc.cluster.local" {
		t.Errorf("Key() = %q", s.Key())
	}
	wantVIPs := []state.NetAddr{{"", netip.MustParseAddr("10.96.0.10")}, {"net2", netip.MustParseAddr("10.96.0.11")}}
	if !slices.Equal(s.VIPs, wantVIPs) {
		t.Errorf("VIPs = %v, want %v", s.VIPs, wantVIPs)
	}
	if len(s.Ports) != 2 || s.Ports[80] != 8080 || s.Ports[443] != 0 {
		t.Errorf("ports = %v, want map[80:8080 443:0]", s.Ports)
	}
	if want := (state.Gateway{Service: "ns/waypoint.ns.svc.cluster.local", HBONEPort: 15009}); s.Waypoint == nil || *s.Waypoint != want {
		t.Errorf("waypoint = %+v, want %+v", s.Waypoint, want)
	}
	if len(s.SANs) != 1 || s.SANs[0].String() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Errorf("SANs = %v", s.SANs)
	}
}
