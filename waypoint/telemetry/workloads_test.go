package telemetry

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestWorkloadsIndex: a client is named only by a workload at its address
// with its identity; the index holds at most its bound of workloads, of
// addresses per workload and of workloads per address, and forgets what is
// replaced or removed.
func TestWorkloadsIndex(t *testing.T) {
	ip := netip.MustParseAddr("10.1.1.4")
	x := NewWorkloads(3)
	id := func(sa string) string { return "spiffe://cluster.local/ns/ns/sa/" + sa }
	x.Set("sleep", Workload{Identity: id("sleep"), Name: "sleep", Namespace: "ns", CanonicalService: "sleep", Addresses: []netip.Addr{ip}})

	p := Peer{Principal: id("sleep"), Addr: netip.AddrPortFrom(netip.AddrFrom16(ip.As16()), 4000)}
	x.Label(&p)
	if p.Workload != "sleep" || p.App != "sleep" || p.CanonicalService != "sleep" || p.Version != "" {
		t.Errorf("sleep by its v4-mapped address: %+v", p)
	}
	other := Peer{Principal: id("evil"), Namespace: "ns", Addr: netip.AddrPortFrom(ip, 4000)}
	x.Label(&other)
	if other != (Peer{Principal: id("evil"), Namespace: "ns", Addr: netip.AddrPortFrom(ip, 4000)}) {
		t.Errorf("another identity at sleep's address was labelled: %+v", other)
	}
	var none *Workloads
	none.Label(&other) // a nil index labels nothing

	// A replacement moves sleep; its old address is forgotten.
	moved := netip.MustParseAddr("10.1.1.9")
	x.Set("sleep", Workload{Identity: id("sleep"), Name: "sleep", Addresses: []netip.Addr{moved}})
	if _, ok := x.Lookup(ip, id("sleep")); ok {
		t.Error("sleep still found at its old address")
	}
	if _, ok := x.Lookup(moved, id("sleep")); !ok {
		t.Error("sleep not found at its new address")
	}

	// Bounds: workloads, then workloads per address, then addresses per
	// workload.
	shared := netip.MustParseAddr("10.2.0.1")
	if !x.Set("a", Workload{Identity: id("a"), Addresses: []netip.Addr{shared}}) || !x.Set("b", Workload{Identity: id("b"), Addresses: []netip.Addr{shared}}) {
		t.Fatal("index refused its 2nd and 3rd workloads")
	}
	if x.Set("c", Workload{Identity: id("c")}) || x.Len() != 3 {
		t.Errorf("index of 3 took a 4th workload (%d held)", x.Len())
	}
	x.Remove("sleep")
	x.Remove("sleep") // twice is harmless
	if x.Len() != 2 {
		t.Errorf("%d held after removing sleep, want 2", x.Len())
	}

	big := NewWorkloads(0)
	for i := range maxWorkloadsPerAddress + 2 {
		big.Set(fmt.Sprint(i), Workload{Identity: id(fmt.Sprint(i)), Addresses: []netip.Addr{shared}})
	}
	if n := len(big.byIP[shared]); n != maxWorkloadsPerAddress {
		t.Errorf("%d workloads share one address, want the bound %d", n, maxWorkloadsPerAddress)
	}
	var many []netip.Addr
	for i := range maxAddressesPerWorkload + 5 {
		many = append(many, netip.AddrFrom4([4]byte{10, 3, 0, byte(i)}))
	}
	big.Set("many", Workload{Identity: id("many"), Addresses: many})
	if n := len(big.byName["many"].Addresses); n != maxAddressesPerWorkload {
		t.Errorf("a workload holds %d addresses, want the bound %d", n, maxAddressesPerWorkload)
	}
	big.Remove("many")
	if _, ok := big.byIP[many[0]]; ok {
		t.Error("a removed workload's address is still indexed")
	}
}
