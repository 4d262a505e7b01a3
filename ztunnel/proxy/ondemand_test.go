package proxy_test

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// demander plays the control plane answering on-demand requests: it
// records what was asked and answers by calling answer.
type demander struct {
	mu     sync.Mutex
	asked  []string
	answer func(state.NetAddr)
}

func (d *demander) DemandAddress(a state.NetAddr) func() {
	d.mu.Lock()
	d.asked = append(d.asked, a.String())
	answer := d.answer
	d.mu.Unlock()
	if answer != nil {
		go answer(a)
	}
	return func() {}
}

func (d *demander) setAnswer(f func(state.NetAddr)) {
	d.mu.Lock()
	d.answer = f
	d.mu.Unlock()
}

func (d *demander) names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.asked...)
}

// A pod's first connection to a pod its ztunnel does not know yet (inside
// the mesh's ranges) is held while ztunnel asks for the address, and goes
// out over HBONE once it arrives — nothing of it crosses the wire in
// plaintext. An address in the ranges that never arrives is refused when
// the bound runs out, not passed through.
func TestUnknownMeshAddressIsHeldThenTunnelled(t *testing.T) {
	m := newMesh(t)
	d := &demander{}
	a := m.newNode("node-a", func(c *proxy.Config) { c.Demand = d; c.HoldUnknown = 3 * time.Second })
	b := m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)

	// Node A has not heard of the server yet; the control plane answers
	// its request 300 ms later.
	serverWL := m.workload(server)
	if rejected := a.store.Apply(state.Update{RemovedAddresses: []string{serverWL.Uid}}); len(rejected) > 0 {
		t.Fatal(rejected)
	}
	d.setAnswer(func(state.NetAddr) {
		time.Sleep(300 * time.Millisecond)
		a.store.Apply(state.Update{Addresses: map[string]*workload.Address{serverWL.Uid: {Type: &workload.Address_Workload{Workload: serverWL}}}})
	})

	wire, err := m.lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	secret := "zmesh-first-connection-" + strings.Repeat("y", 32)
	got, err := client.call(app.addr, secret)
	wire.Stop()
	if err != nil || got != client.ip.String()+"|"+secret {
		t.Fatalf("first connection to a pod not yet known: %q %v", got, err)
	}
	if asked := d.names(); len(asked) != 1 || asked[0] != "/"+server.ip.String() {
		t.Errorf("asked the control plane for %q, want [/%s]", asked, server.ip)
	}
	if wire.Contains([]byte(secret)) {
		t.Fatal("the first connection crossed the underlay in plaintext")
	}
	waitFor(t, func() bool { return len(a.logLines("connection complete")) > 0 }, "node A's access log")
	if rec := a.logLines("connection complete")[0]; rec["dst.identity"] != "spiffe://cluster.local/ns/demo/sa/echo" {
		t.Errorf("the connection did not go over HBONE to the server: %v", rec)
	}

	// Nobody ever answers for an address in the ranges: refused at the
	// bound, never passed through.
	d.setAnswer(nil)
	ghost := netip.AddrPortFrom(netip.MustParseAddr("10.61.0.250"), 8080)
	if got, err := client.call(ghost, "hello"); err == nil {
		t.Fatalf("a connection to an unknown address in the mesh's ranges succeeded: %q", got)
	}
	refused := false
	for _, rec := range a.logLines("outbound connection refused") {
		if rec["dst.addr"] == ghost.String() && strings.Contains(rec["reason"].(string), "still unknown") {
			refused = true
		}
	}
	if !refused {
		t.Error("no log line says the connection to the unknown address was refused")
	}
}

// A ztunnel that serves a pod before its first config (a proxy whose
// state was never synced) refuses the pod's outbound connections: nothing
// crosses the wire in plaintext, the app is never reached. Once the config
// arrives the same connection goes over HBONE.
func TestNothingLeavesBeforeSync(t *testing.T) {
	m := newMesh(t)
	a := m.newNode("node-a")
	// Pushes skip node A: its state stays empty and unsynced.
	m.nodes = m.nodes[:0]
	b := m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	if a.store.Snapshot().Synced() {
		t.Fatal("node A's state is synced: the test proves nothing")
	}

	wire, err := m.lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	secret := "zmesh-before-sync-" + strings.Repeat("z", 32)
	got, err := client.call(app.addr, secret)
	wire.Stop()
	if err == nil {
		t.Fatalf("a connection before the first sync succeeded: %q", got)
	}
	if wire.Contains([]byte(secret)) {
		t.Fatal("plaintext left the pod before ztunnel had its config")
	}
	select {
	case peer := <-app.peers:
		t.Fatalf("the app was reached (from %s) before ztunnel had its config", peer)
	default:
	}

	if err := a.store.Replace(m.update()); err != nil {
		t.Fatal(err)
	}
	if got, err := client.call(app.addr, secret); err != nil || got != client.ip.String()+"|"+secret {
		t.Fatalf("after the sync: %q %v", got, err)
	}
	waitFor(t, func() bool { return len(a.logLines("connection complete")) >= 2 }, "node A's access log")
	if rec := a.logLines("connection complete")[1]; rec["dst.identity"] != "spiffe://cluster.local/ns/demo/sa/echo" {
		t.Errorf("after the sync the connection did not go over HBONE: %v", rec)
	}
}
