package state

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	"github.com/zmesh/zmesh/api/workload"
)

func internedWorkload(i int, ns, node string) *workload.Address {
	return &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: fmt.Sprintf("Kubernetes//Pod/%s/pod-%d", ns, i), Name: fmt.Sprintf("pod-%d", i), WorkloadName: fmt.Sprintf("pod-%d", i),
		Namespace: ns, Node: node, ClusterId: "Kubernetes", TrustDomain: "cluster.local", ServiceAccount: "sa",
		TunnelProtocol: workload.TunnelProtocol_HBONE,
		Addresses:      [][]byte{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).AsSlice()},
		Services: map[string]*workload.PortList{
			ns + "/svc." + ns + ".svc.cluster.local": {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080}}},
		},
		Waypoint: &workload.GatewayAddress{Destination: &workload.GatewayAddress_Hostname{
			Hostname: &workload.NamespacedHostname{Namespace: ns, Hostname: "waypoint." + ns + ".svc.cluster.local"}}},
	}}}
}

// Workloads received in different updates share the values they repeat,
// and the store keeps the bytes it was given rather than a copy.
func TestStoreSharesRepeatedValues(t *testing.T) {
	s := NewStore()
	a, b := internedWorkload(1, "shop", "node-1"), internedWorkload(2, "shop", "node-1")
	enc, err := encodeRaw(a)
	if err != nil {
		t.Fatal(err)
	}
	nameA, nameB := a.GetWorkload().Uid, b.GetWorkload().Uid
	if rej := s.Apply(Update{Addresses: map[string]*workload.Address{nameA: a}, Encoded: map[string][]byte{nameA: enc}}); rej != nil {
		t.Fatal(rej)
	}
	if rej := s.Apply(Update{Addresses: map[string]*workload.Address{nameB: b}}); rej != nil {
		t.Fatal(rej)
	}
	wa, wb := s.Snapshot().Workload(nameA), s.Snapshot().Workload(nameB)
	same := func(field, x, y string) {
		t.Helper()
		if x != y || unsafe.StringData(x) != unsafe.StringData(y) {
			t.Errorf("%s: %q and %q are not one string", field, x, y)
		}
	}
	same("namespace", wa.Namespace, wb.Namespace)
	same("node", wa.Node, wb.Node)
	same("cluster id", wa.ClusterID, wb.ClusterID)
	same("identity", wa.Identity.String(), wb.Identity.String())
	same("uid and resource name", wa.UID, nameA)
	same("name and workload name", wa.Name, wa.WorkloadName)
	if wa.Waypoint != wb.Waypoint {
		t.Errorf("waypoints %v and %v are two copies", wa.Waypoint, wb.Waypoint)
	}
	if reflect.ValueOf(wa.Services).UnsafePointer() != reflect.ValueOf(wb.Services).UnsafePointer() {
		t.Errorf("services %v and %v are two maps", wa.Services, wb.Services)
	}
	if &wa.raw[0] != &enc[0] {
		t.Error("the store copied the encoded workload it was given")
	}
	if wa.Raw().GetUid() != nameA || wb.Raw().GetUid() != nameB {
		t.Errorf("raw uids %q %q, want %q %q", wa.Raw().GetUid(), wb.Raw().GetUid(), nameA, nameB)
	}
}

// Churn through many namespaces and nodes does not grow what the store
// keeps for sharing beyond a bound of what is in use.
func TestInternerBoundedUnderChurn(t *testing.T) {
	s := NewStore()
	prev := ""
	for i := range 20_000 {
		a := internedWorkload(i, fmt.Sprintf("ns-%d", i), fmt.Sprintf("node-%d", i))
		name := a.GetWorkload().Uid
		u := Update{Addresses: map[string]*workload.Address{name: a}}
		if prev != "" {
			u.RemovedAddresses = []string{prev}
		}
		if rej := s.Apply(u); rej != nil {
			t.Fatal(rej)
		}
		prev = name
	}
	if n := s.in.size(); n > 2*s.in.live+1024 || s.in.live > 16 {
		t.Errorf("the interner holds %d values (%d live at the last prune) for one workload", n, s.in.live)
	}
}
