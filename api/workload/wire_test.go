package workload_test

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
)

// Istio's ztunnel and istiod decode these messages by field number: a
// renumbered field would silently drop data between the two meshes. The
// numbers below are Istio's (istio.workload / istio.security).
func TestFieldNumbersMatchIstio(t *testing.T) {
	cases := []struct {
		msg    protoreflect.ProtoMessage
		fields map[string]protoreflect.FieldNumber
	}{
		{&workload.Address{}, map[string]protoreflect.FieldNumber{"workload": 1, "service": 2}},
		{&workload.Workload{}, map[string]protoreflect.FieldNumber{
			"uid": 20, "name": 1, "namespace": 2, "addresses": 3, "hostname": 21, "network": 4,
			"tunnel_protocol": 5, "trust_domain": 6, "service_account": 7, "waypoint": 8,
			"network_gateway": 19, "node": 9, "canonical_name": 10, "canonical_revision": 11,
			"workload_type": 12, "workload_name": 13, "native_tunnel": 14, "services": 22,
			"authorization_policies": 16, "status": 17, "cluster_id": 18, "locality": 24, "network_mode": 25,
		}},
		{&workload.Service{}, map[string]protoreflect.FieldNumber{
			"name": 1, "namespace": 2, "hostname": 3, "addresses": 4, "ports": 5,
			"subject_alt_names": 6, "waypoint": 7, "load_balancing": 8, "ip_families": 9, "visibility": 14,
		}},
		{&workload.GatewayAddress{}, map[string]protoreflect.FieldNumber{"hostname": 1, "address": 2, "hbone_mtls_port": 3}},
		{&workload.NetworkAddress{}, map[string]protoreflect.FieldNumber{"network": 1, "address": 2, "length": 3}},
		{&workload.Port{}, map[string]protoreflect.FieldNumber{"service_port": 1, "target_port": 2, "app_protocol": 3}},
		{&workload.LoadBalancing{}, map[string]protoreflect.FieldNumber{"routing_preference": 1, "mode": 2, "health_policy": 3}},
		{&security.Authorization{}, map[string]protoreflect.FieldNumber{
			"name": 1, "namespace": 2, "scope": 3, "action": 4, "rules": 5, "dry_run": 6,
		}},
		{&security.Clause{}, map[string]protoreflect.FieldNumber{"matches": 2}},
		{&security.Match{}, map[string]protoreflect.FieldNumber{
			"namespaces": 1, "not_namespaces": 2, "principals": 3, "not_principals": 4,
			"source_ips": 5, "not_source_ips": 6, "destination_ips": 7, "not_destination_ips": 8,
			"destination_ports": 9, "not_destination_ports": 10, "service_accounts": 11, "not_service_accounts": 12,
		}},
		{&security.StringMatch{}, map[string]protoreflect.FieldNumber{"exact": 1, "prefix": 2, "suffix": 3, "presence": 4}},
	}
	for _, c := range cases {
		d := c.msg.ProtoReflect().Descriptor()
		for name, want := range c.fields {
			f := d.Fields().ByName(protoreflect.Name(name))
			if f == nil {
				t.Errorf("%s has no field %s", d.FullName(), name)
				continue
			}
			if f.Number() != want {
				t.Errorf("%s.%s is field %d, Istio's is %d", d.FullName(), name, f.Number(), want)
			}
		}
	}
	if got := (&workload.Address{}).ProtoReflect().Descriptor().FullName(); got != "istio.workload.Address" {
		t.Errorf("Address is %s, want istio.workload.Address (the xDS type URL names it)", got)
	}
	if got := (&security.Authorization{}).ProtoReflect().Descriptor().FullName(); got != "istio.security.Authorization" {
		t.Errorf("Authorization is %s, want istio.security.Authorization", got)
	}
}
