package main

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/e2e/netenv"
)

// Every pod sits in its node's pod range, behind the node's bridge, as in
// the demo and the e2e suite: none is on the LAN, none takes the range's
// gateway (the node's own address on its pod bridge), no two share an
// address, and the waypoint's pod is in node-3's range.
func TestPodsInTheirNodesRanges(t *testing.T) {
	nodes := allNodes()
	if len(nodes) != 3 || nodes[2] != proxyNode {
		t.Fatalf("nodes %v, want the two meshed nodes then %s", nodes, proxyNode)
	}
	rangeOf := func(node string) netip.Prefix {
		for i, n := range nodes {
			if n == node {
				return netenv.PodCIDR(i)
			}
		}
		t.Fatalf("no node %q", node)
		return netip.Prefix{}
	}
	seen := map[netip.Addr]string{}
	check := func(name, node string, addr netip.Addr) {
		t.Helper()
		r := rangeOf(node)
		if !r.Contains(addr) || addr == r.Addr() || addr == r.Addr().Next() {
			t.Errorf("pod %s at %s: not a pod address of %s's range %s", name, addr, node, r)
		}
		if lanPrefix.Contains(addr) {
			t.Errorf("pod %s at %s: on the LAN %s", name, addr, lanPrefix)
		}
		if other, ok := seen[addr]; ok {
			t.Errorf("pods %s and %s share %s", other, name, addr)
		}
		seen[addr] = name
	}
	for _, p := range benchPods {
		check(p.name, p.node, p.addr)
	}
	check("waypoint", proxyNode, waypointPodAddr)
	if p := waypointPod(mustDesired(t)); p.Status.PodIP != waypointPodAddr.String() || p.Spec.NodeName != proxyNode {
		t.Errorf("waypoint pod at %s on %s, want %s on %s", p.Status.PodIP, p.Spec.NodeName, waypointPodAddr, proxyNode)
	}
}

// The nodes' LAN addresses the proxies' configurations and the
// certificate name are those netenv hands out to the bench's nodes, with
// pod ranges routed between them.
func TestNodesAsNetenvMakesThem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces: run it as root")
	}
	lan, err := netenv.NewLAN(lanPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lan.Close() })
	hosts, err := lan.AddNodes(allNodes()...)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]netip.Addr{}, nodeAddrs...), proxyNodeAddr)
	for i, h := range hosts {
		if h.Addr != want[i] || h.PodCIDR != netenv.PodCIDR(i) {
			t.Errorf("%s: %s with pods %s, the bench expects %s with pods %s", h.Name, h.Addr, h.PodCIDR, want[i], netenv.PodCIDR(i))
		}
	}
	// node-3 reaches the server pods' range through node-2 (nginx and
	// haproxy-http dial plain-server from there).
	out, err := exec.Command("ip", "netns", "exec", hosts[2].Host.Name, "ip", "route", "get", plainServer.addr.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via "+nodeAddrs[1].String()) {
		t.Errorf("node-3's route to %s: %s %v, want via %s", plainServer.addr, out, err, nodeAddrs[1])
	}
}

// The teardown check finds a process left in a namespace the bench made,
// also once the namespace's name is gone, and nothing once it has exited.
func TestProcessesIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces: run it as root")
	}
	ns, err := netenv.NewNS("proctest")
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			ns.Close()
		}
	})
	e := &env{lan: &netenv.LAN{Underlay: ns}}
	nss := e.namespaces()
	if len(nss) != 1 {
		t.Fatalf("namespaces: %v, want the one made", nss)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	found := func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := processesIn(nss)
			if len(left) == 1 && strings.Contains(left[0], "sleep 30") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("processesIn = %q, want the sleep", left)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	found()
	// The name goes; the process keeps the namespace alive.
	closed = true
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	found()
	cmd.Process.Kill()
	cmd.Wait()
	if left := processesIn(nss); len(left) != 0 {
		t.Fatalf("processesIn = %q after the only process exited", left)
	}
}

func mustDesired(t *testing.T) deployer.Objects {
	t.Helper()
	_, o, err := waypointDesired(netip.AddrPortFrom(controlPlane, 15012))
	if err != nil {
		t.Fatal(err)
	}
	return o
}
