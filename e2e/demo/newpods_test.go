package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/api/filepod"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// The mesh the new pods join: namespace mesh is ambient with STRICT mTLS,
// and its pods labelled app: new admit only the client's identity. The
// outsider is a plain pod of namespace outside.
const newPodsBase = `apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: mesh
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: new-from-client
  namespace: mesh
spec:
  selector:
    matchLabels:
      app: new
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/mesh/sa/client"]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: mesh
  labels: {app: client}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: app, image: app}]
status:
  podIP: 10.50.1.10
---
apiVersion: v1
kind: Pod
metadata:
  name: outsider
  namespace: outside
spec:
  nodeName: node-2
  containers: [{name: app, image: app}]
status:
  podIP: 10.50.2.10
`

const newPodYAML = `---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: mesh
  labels: {app: new}
spec:
  nodeName: %s
  serviceAccountName: new
  containers: [{name: app, image: app}]
status:
  podIP: %s
`

// newPodResult is what was seen of one new pod from the moment its node
// runner reported it running.
type newPodResult struct {
	name, node  string
	addr        netip.Addr
	notRunning  error // it never ran
	uncaptured  string
	firstErr    error // the client's first connection
	unreachable error
}

// TestNewPodsJoinAtOnce adds pods to a running mesh (zmeshd on a YAML
// directory, an agent and a ztunnel per node, the node runners starting
// pods through the real CNI chain) in rounds, and at the moment each new
// pod runs: its capture must already be pinned and a plaintext client
// outside the mesh refused (STRICT), the mesh client's first connection
// must succeed, and the pod must be reachable then and at the end. A new
// pod is never uncaptured (CNI ADD decides membership authoritatively,
// never "not a member" on a cache miss) nor captured twice (the running-pod
// enrolment and CNI ADD meet), which left pods unreachable for good.
func TestNewPodsJoinAtOnce(t *testing.T) {
	const rounds, perRound = 4, 4
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := preflight(true); err != nil {
		t.Fatal(err)
	}
	m := &mesh{keep: os.Getenv("ZMESH_DEMO_KEEP") != ""}
	var err error
	if m.tmp, err = os.MkdirTemp("", "zmesh-newpods-"); err != nil {
		t.Fatal(err)
	}
	runCtx, stopRunners := context.WithCancel(context.Background())
	m.stopRunners = stopRunners
	t.Cleanup(func() {
		m.Close()
		if left := m.leftovers(); len(left) > 0 {
			t.Errorf("cleanup left %d things behind: %v", len(left), left)
		}
	})
	m.bin = filepath.Join(m.tmp, "bin")
	if err := m.build(ctx); err != nil {
		t.Fatal(err)
	}
	m.meshDir = filepath.Join(m.tmp, "mesh")
	if err := os.MkdirAll(m.meshDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.meshDir, "00-base.yaml"), []byte(newPodsBase), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.network(); err != nil {
		t.Fatal(err)
	}
	if err := m.startZmeshd(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range m.nodes {
		if err := m.startNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range m.nodes {
		if err := m.startPods(ctx, n, runCtx); err != nil {
			t.Fatal(err)
		}
	}
	client := &pod{name: "client", ns: "mesh", rp: m.node("node-1").runner.Pod("mesh", "client")}
	outsider := &pod{name: "outsider", ns: "outside", rp: m.node("node-2").runner.Pod("outside", "outsider")}
	if client.rp == nil || outsider.rp == nil {
		t.Fatal("the client or the outsider did not start")
	}
	if err := waitFor(ctx, func() bool {
		s := m.synced(ctx)
		return s["ztunnel"] == len(m.nodes) && s["zmesh-cni-agent"] == len(m.nodes)
	}); err != nil {
		t.Fatal("the ztunnels and agents are not synced with zmeshd")
	}

	wire, err := m.lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	var results []*newPodResult
	for r := range rounds {
		var yaml strings.Builder
		var round []*newPodResult
		for i := range perRound {
			n := m.nodes[i%len(m.nodes)]
			base := n.cidr.Addr().As4()
			base[3] = byte(100 + r*perRound + i)
			res := &newPodResult{name: fmt.Sprintf("new-%d-%d", r, i), node: n.name, addr: netip.AddrFrom4(base)}
			fmt.Fprintf(&yaml, newPodYAML, res.name, res.node, res.addr)
			round = append(round, res)
		}
		var wg sync.WaitGroup
		for _, res := range round {
			wg.Go(func() { m.watchNewPod(ctx, client, outsider, res) })
		}
		file := filepath.Join(m.meshDir, fmt.Sprintf("50-round-%d.yaml", r))
		if err := os.WriteFile(file, []byte(yaml.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		results = append(results, round...)
	}
	// Unreachable for good is what the end shows.
	for _, res := range results {
		if res.notRunning != nil || res.unreachable != nil {
			continue
		}
		dst := netip.AddrPortFrom(res.addr, podapp.EchoPort)
		if _, err := call(ctx, client, dst, "last "+res.name); err != nil {
			res.unreachable = fmt.Errorf("at the end: %w", err)
		}
	}
	wire.Stop()
	frames, _ := wire.Stats()
	t.Logf("%d pods added in %d rounds in %s", len(results), rounds, time.Since(began).Round(10*time.Millisecond))

	var notRunning, uncaptured, unreachable, firstFailed []string
	for _, res := range results {
		who := res.name + " (" + res.node + ")"
		if res.notRunning != nil {
			notRunning = append(notRunning, who+": "+res.notRunning.Error())
			continue
		}
		if res.uncaptured != "" {
			uncaptured = append(uncaptured, who+": "+res.uncaptured)
		}
		if res.unreachable != nil {
			unreachable = append(unreachable, who+": "+res.unreachable.Error())
		}
		if res.firstErr != nil {
			firstFailed = append(firstFailed, who+": "+res.firstErr.Error())
		}
	}
	if len(notRunning) > 0 {
		t.Errorf("%d of %d new pods never ran:\n  %s\n(agent logs: %s)", len(notRunning), len(results), strings.Join(notRunning, "\n  "), m.agentLogs())
	}
	if len(uncaptured) > 0 {
		t.Errorf("%d of %d new pods ran uncaptured:\n  %s", len(uncaptured), len(results), strings.Join(uncaptured, "\n  "))
	}
	if len(unreachable) > 0 {
		t.Errorf("%d of %d new pods unreachable from the client:\n  %s", len(unreachable), len(results), strings.Join(unreachable, "\n  "))
	}
	if len(firstFailed) > 0 {
		t.Errorf("%d of %d first connections to a new pod failed:\n  %s", len(firstFailed), len(results), strings.Join(firstFailed, "\n  "))
	}
	if frames == 0 {
		t.Error("the underlay capture saw nothing: it cannot vouch for anything")
	}
	for _, res := range results {
		for _, msg := range []string{"first " + res.name, "hello " + res.name, "last " + res.name} {
			if wire.Contains([]byte(msg)) {
				t.Errorf("the client's %q crossed the underlay in plaintext", msg)
			}
		}
	}
}

// watchNewPod waits for a new pod to run and checks it at once: pinned
// capture, the outsider refused, the client's first connection, and the
// client reaching it within a few seconds if the first failed.
func (m *mesh) watchNewPod(ctx context.Context, client, outsider *pod, res *newPodResult) {
	n := m.node(res.node)
	deadline := time.Now().Add(90 * time.Second)
	for n.runner.Pod("mesh", res.name) == nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			res.notRunning = errors.New("not running 90s after it was written")
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !n.pinned(filepod.UID("mesh", res.name)) {
		res.uncaptured = "running with no capture pinned"
	}
	dst := netip.AddrPortFrom(res.addr, podapp.EchoPort)
	var wg sync.WaitGroup
	wg.Go(func() {
		if reply, err := call(ctx, outsider, dst, "outsider"); err == nil {
			res.uncaptured += fmt.Sprintf("; a plaintext client outside the mesh got an answer past STRICT: %q", reply)
		}
	})
	wg.Go(func() {
		reply, err := call(ctx, client, dst, "first "+res.name)
		if err == nil && !strings.Contains(reply, "pod=mesh/"+res.name) {
			err = fmt.Errorf("answered by someone else: %q", reply)
		}
		res.firstErr = err
	})
	wg.Wait()
	if res.firstErr == nil {
		return
	}
	if err := waitFor(ctx, func() bool { _, err := call(ctx, client, dst, "hello "+res.name); return err == nil }); err != nil {
		res.unreachable = fmt.Errorf("no answer within 15s of running (first connection: %v)", res.firstErr)
	}
}

// agentLogs names the nodes' agent logs, for a failure's reader.
func (m *mesh) agentLogs() string {
	var out []string
	for _, n := range m.nodes {
		out = append(out, filepath.Join(n.dir, "agent.log"))
	}
	return strings.Join(out, ", ")
}
