package plugin_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/cni/cniapi"
)

// adds counts the Adds ztunnel received for a pod.
func (n *node) adds(uid string) int {
	c := 0
	for _, r := range n.ztunnel.Requests() {
		if r.Msg.GetAdd().GetUid() == uid {
			c++
		}
	}
	return c
}

// TestCaptureOnceWhenAddMeetsEnrolment: the runtime's ADD and the agent's
// enrolment of running pods may both see a new pod within milliseconds.
// The pod is captured and handed to ztunnel once, whatever the order: a
// second capture would attach a fresh program whose listener map is empty
// while ztunnel keeps its listeners in the first one, and the pod would be
// unreachable for good.
func TestCaptureOnceWhenAddMeetsEnrolment(t *testing.T) {
	n := newNode(t, debianCNIDir)
	list := n.confList(t, "1.0.0")
	p := n.newPod(t, "late", "web")
	n.add(t, list, p)
	t.Cleanup(func() { n.cni(t, "DEL", list, p.rt) })
	p.runProcess(t)
	other := n.newPod(t, "other", "db")
	n.add(t, list, other)
	t.Cleanup(func() { n.cni(t, "DEL", list, other.rt) })
	target := netip.AddrPortFrom(other.ip, 9000).String()

	n.mu.Lock()
	n.ambient = map[string]bool{"late": true}
	n.mu.Unlock()
	ctx := context.Background()
	running := &cniapi.Pod{UID: p.uid, Name: "web", Namespace: "late", IPs: []string{p.ip.String()}}
	added := &cniapi.Pod{UID: p.uid, Name: "web", Namespace: "late", Netns: "/run/netns/" + p.ns.Name, IPs: []string{p.ip.String()}}
	reachesProxy := func(ln *net.TCPListener) error {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := p.ns.Dial(dctx, "tcp", target)
		if err != nil {
			return err
		}
		defer conn.Close()
		ln.SetDeadline(time.Now().Add(2 * time.Second))
		acc, err := ln.Accept()
		if err != nil {
			return err
		}
		acc.Close()
		return nil
	}

	// Enrolment first, then the runtime's ADD: ztunnel's listener stays
	// the one capture steers to.
	if captured, err := n.agent.EnrollRunning(ctx, running, "/proc"); err != nil || !captured {
		t.Fatalf("enrol running pod: captured=%v err=%v", captured, err)
	}
	ln := proxyListener(t, p, filepath.Join(n.bpfRoot, p.uid))
	if err := reachesProxy(ln); err != nil {
		t.Fatalf("after enrolment: %v", err)
	}
	if captured, err := n.agent.Add(ctx, added); err != nil || !captured {
		t.Fatalf("ADD of the captured pod: captured=%v err=%v", captured, err)
	}
	if err := reachesProxy(ln); err != nil {
		t.Fatalf("after a second ADD the pod's connections no longer reach its proxy: %v", err)
	}
	if got := n.adds(p.uid); got != 1 {
		t.Fatalf("ztunnel got %d Adds for the pod, want 1", got)
	}
	ln.Close()

	// Then the two at the same moment, many times over.
	for round := range 8 {
		if err := n.agent.Del(ctx, added); err != nil {
			t.Fatal(err)
		}
		before := n.adds(p.uid)
		var wg sync.WaitGroup
		var addErr, enrolErr error
		start := make(chan struct{})
		wg.Go(func() { <-start; _, addErr = n.agent.Add(ctx, added) })
		wg.Go(func() { <-start; _, enrolErr = n.agent.EnrollRunning(ctx, running, "/proc") })
		close(start)
		wg.Wait()
		if addErr != nil || enrolErr != nil {
			t.Fatalf("round %d: ADD: %v, enrolment: %v", round, addErr, enrolErr)
		}
		if got := n.adds(p.uid) - before; got != 1 {
			t.Fatalf("round %d: ztunnel got %d Adds for the pod, want 1", round, got)
		}
		if !n.agent.IsCaptured(p.uid) {
			t.Fatalf("round %d: pod not captured", round)
		}
	}

	// The runtime recreated the pod's sandbox without a DEL: the same uid
	// in another namespace is captured there, and the first released.
	p2 := n.newPod(t, "late", "web")
	for i, a := range p2.rt.Args {
		if a[0] == "K8S_POD_UID" {
			p2.rt.Args[i][1] = p.uid
		}
	}
	before := len(n.ztunnel.Requests())
	if _, err := n.cni(t, "ADD", list, p2.rt); err != nil {
		t.Fatalf("ADD of the recreated sandbox: %v", err)
	}
	t.Cleanup(func() { n.cni(t, "DEL", list, p2.rt) })
	var got []string
	for _, r := range n.ztunnel.Requests()[before:] {
		switch {
		case r.Msg.GetDel().GetUid() == p.uid:
			got = append(got, "del")
		case r.Msg.GetAdd().GetUid() == p.uid:
			got = append(got, "add")
		}
	}
	if len(got) != 2 || got[0] != "del" || got[1] != "add" {
		t.Fatalf("ztunnel got %v for the recreated sandbox, want del then add", got)
	}
	if rulesAt(t, p.ns, 100) != 0 || rulesAt(t, p2.ns, 100) == 0 {
		t.Fatal("capture routing not moved from the old sandbox to the new one")
	}
}
