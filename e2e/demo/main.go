// Command demo runs zmesh's L4 mesh on one machine with no cluster, the
// way docs/decisions.md, "Running without a cluster", describes: zmeshd reading a
// directory of Kubernetes/Istio YAML (the mesh/ directory beside this
// file), and two "nodes" made of network namespaces, each with its own pod
// network (the CNI bridge and host-local plugins), a zmesh-cni-agent
// process that chains zmesh-cni into that network and learns which pods
// are ambient from zmeshd, a ztunnel process fed by zmeshd over delta xDS,
// and a node runner that plays the kubelet: it starts the node's pods from
// the same YAML directory through the node's real CNI chain. Plain TCP from
// the pods is captured (eBPF) and tunnelled over HBONE; the demo shows who
// reached whom with which identity, what policy refused, that nothing
// readable crossed the wire, a policy edit taking effect, a running pod
// joining the mesh, a canary split 90/10 by a waypoint (which node-2's
// runner starts from the deployer's Deployment, there being no deployer
// without a cluster) that the canary's pods cannot be reached around, the
// same waypoint routing by header, timing out and aborting requests as the
// VirtualService is edited, and the ztunnels' logs and metrics. It removes everything it made.
//
// It needs root (network namespaces, eBPF). Run it with `make demo`.
package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/term"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/podapp"
	"github.com/zmesh/zmesh/e2e/proc"
	"github.com/zmesh/zmesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

//go:embed mesh/*.yaml
var meshFiles embed.FS

func main() {
	// The pods' processes are this executable again (see e2e/podapp).
	if podapp.IsApp() {
		podapp.Main()
	}
	bin := flag.String("bin", "", "directory holding prebuilt zmeshd, ztunnel, zmeshctl, zmesh-cni-agent, zmesh-cni and waypoint (default: go build them)")
	local := flag.String("mesh", "", "run this directory of Kubernetes/Istio/Gateway API YAML on the local mesh instead of the tour, until Ctrl-C")
	session := flag.String("session", DefaultSession, "with -mesh: the session file, which zmeshctl local status reads")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *local != "" {
		if err := runLocal(ctx, *bin, *local, *session, os.Stdout); err != nil {
			if errors.Is(err, errInterrupted) {
				os.Exit(130)
			}
			os.Exit(1)
		}
		return
	}
	// At a terminal the mesh stays up after the tour until Ctrl-C; in CI
	// (stdin not a terminal) the demo exits after it.
	stay := term.IsTerminal(int(os.Stdin.Fd()))
	if err := run(ctx, *bin, os.Stdout, stay); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed")
		if errors.Is(err, errInterrupted) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

// pod is a pod of the YAML as the tour sees it.
type pod struct {
	name, ns, sa, node string
	uid                string
	ambient            bool
	addr               netip.Addr
	rp                 *noderunner.RunningPod
}

func (p *pod) id() string { return identity.MustWorkloadID(td.Name(), p.ns, p.sa).String() }

type story struct{ out io.Writer }

// say prints a step that passed, with its evidence.
func (s story) say(who, format string, args ...any) {
	fmt.Fprintf(s.out, "  ✓ %-8s %s\n", who, fmt.Sprintf(format, args...))
}

// fail prints a step that failed.
func (s story) fail(err error) {
	fmt.Fprintf(s.out, "  ✗ %v\n", err)
}

// note prints a line that is not a check.
func (s story) note(format string, args ...any) {
	fmt.Fprintf(s.out, "    %s\n", fmt.Sprintf(format, args...))
}

// errInterrupted is run's error when a signal stopped the tour early.
var errInterrupted = errors.New("interrupted")

// run starts the mesh, runs the tour, and (with stay) keeps the mesh up
// until ctx ends; then it removes everything. It prints a ✓ line per step
// that passed and a ✗ line for the one that failed, and fails also when
// the cleanup leaves anything behind.
func run(ctx context.Context, binDir string, out io.Writer, stay bool) (err error) {
	st := story{out}
	if err := preflight(binDir == ""); err != nil {
		st.fail(err)
		return err
	}
	// Library logs would interleave with the story.
	slog.SetDefault(quiet)
	fmt.Fprintln(out, "zmesh demo: an L4 ambient mesh on two nodes, and L7 through a waypoint (no cluster needed)")
	fmt.Fprintln(out)
	began := time.Now()

	m, err := newMesh("zmesh-demo-")
	if err != nil {
		st.fail(err)
		return err
	}
	// Pods are started under a context of their own: on Ctrl-C they are
	// stopped in order by Close, not cut off by the signal.
	runCtx, stopRunners := context.WithCancel(context.Background())
	m.stopRunners = stopRunners
	defer func() { err = m.finish(ctx, st, err, nil) }()
	if err := m.binaries(ctx, st, binDir); err != nil {
		return err
	}
	built := time.Now()

	// 1. The mesh's config: Kubernetes and Istio YAML in a directory, which
	// zmeshd and the node runners both read.
	m.meshDir = filepath.Join(m.tmp, "mesh")
	if err := copyMesh(m.meshDir); err != nil {
		return err
	}
	u, err := (&dir.Source{Dir: m.meshDir, Log: quiet}).Load()
	if err != nil {
		return err
	}
	if len(u.Errors) > 0 {
		return fmt.Errorf("the shipped mesh YAML does not load: %v", u.Errors)
	}
	pods := podsOf(u.Snapshot)
	byName := map[string]*pod{}
	for _, p := range pods {
		byName[p.name] = p
	}
	alice, mallory, bob, legacy := byName["alice"], byName["mallory"], byName["bob"], byName["legacy"]
	if alice == nil || mallory == nil || bob == nil || legacy == nil {
		return errors.New("the shipped mesh YAML lacks one of the pods alice, mallory, bob, legacy")
	}
	webV1, webV2 := byName["web-v1"], byName["web-v2"]
	if webV1 == nil || webV2 == nil {
		return errors.New("the shipped mesh YAML lacks one of the pods web-v1, web-v2")
	}
	if err := m.setWaypoints(u.Snapshot.Gateways); err != nil {
		return err
	}
	if _, ok := m.waypointToken(canaryWaypoint); !ok {
		return fmt.Errorf("the shipped mesh YAML lacks the waypoint Gateway %s", canaryWaypoint)
	}
	st.say("config", "%s: namespaces demo (ambient) and legacy, %d pods, service echo, STRICT mTLS, echo only from alice", m.meshDir, len(pods))
	st.say("config", "waypoint Gateway %s; service web (pods v1, v2) uses it: VirtualService web sends 90%% to subset v1, 10%% to v2", canaryWaypoint)

	// 2. The network: an underlay and the nodes' host namespaces.
	if err := m.network(); err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	}
	var desc []string
	for _, n := range m.nodes {
		desc = append(desc, fmt.Sprintf("%s %s (pods %s)", n.name, n.addr, n.cidr))
	}
	st.say("net", "underlay %s in namespace %s: %s", underlay, m.lan.Underlay.Name, strings.Join(desc, ", "))
	for _, p := range pods {
		n := m.node(p.node)
		if n == nil || !n.cidr.Contains(p.addr) {
			return fmt.Errorf("pod %s/%s: status.podIP %s is not in the pod range of its node %q", p.ns, p.name, p.addr, p.node)
		}
	}

	// 3. zmeshd: reads the directory, serves xDS and the CA.
	if err := m.startZmeshd(ctx); err != nil {
		return err
	}
	st.say("zmeshd", "pid %d ready: --config-dir, delta xDS + CA on %s, /debug/syncz on %s", m.zmeshd.Pid(), m.zmeshdXDS, m.zmeshdMon)

	// 4. Per node: the pod network, zmesh-cni-agent and ztunnel.
	for _, n := range m.nodes {
		start := time.Now()
		if err := m.startNode(ctx, n); err != nil {
			return err
		}
		st.say(n.name, "zmesh-cni-agent pid %d (no cluster: members from zmeshd's workload stream) chained zmesh-cni into %s: %s",
			n.agent.Pid(), noderunner.PrimaryConflist, strings.Join(n.chain(), " → "))
		st.say(n.name, "ztunnel pid %d ready (config from zmeshd, pods from the agent over ZDS); node up in %s", n.ztunnel.Pid(), time.Since(start).Round(10*time.Millisecond))
	}

	// 5. The pods: each node's runner starts its pods from the YAML through
	// the node's CNI chain; zmesh-cni's ADD returns once ztunnel acked.
	for _, n := range m.nodes {
		if err := m.startPods(ctx, n, runCtx); err != nil {
			return fmt.Errorf("%s: start pods: %w", n.name, err)
		}
	}
	wpNode := m.node(waypointNode)
	wp := wpNode.runner.Waypoint(canaryWaypoint.Namespace, canaryWaypoint.Name)
	if wp == nil {
		return fmt.Errorf("the waypoint of Gateway %s did not start on %s (runner log: %s)", canaryWaypoint, waypointNode, filepath.Join(wpNode.dir, "noderunner.log"))
	}
	if wpNode.pinned(string(wp.UID)) {
		return errors.New("the waypoint's pod was captured: its port 15008 is its own")
	}
	st.say("waypoint", "%s on %s: the deployer's Deployment for Gateway %s run as the waypoint binary (pid %d), CNI ADD (%s) in %s, not captured; ready (probe on :15021) after its config from zmeshd over TLS as %s",
		wp.IP, waypointNode, canaryWaypoint, wp.Pid(), strings.Join(wpNode.chain(), " → "), wp.CNIAdd.Round(time.Millisecond),
		identity.MustWorkloadID(td.Name(), canaryWaypoint.Namespace, canaryWaypoint.Name))
	for _, p := range pods {
		n := m.node(p.node)
		if p.rp = n.runner.Pod(p.ns, p.name); p.rp == nil {
			return fmt.Errorf("pod %s/%s did not start on %s", p.ns, p.name, p.node)
		}
		chain := strings.Join(n.chain(), " → ")
		captured := len(n.agent.LogRecords("pod captured", "pod", p.ns+"/"+p.name)) > 0
		if !p.ambient {
			if captured || n.pinned(p.uid) {
				return fmt.Errorf("%s/%s was captured though namespace %s is not ambient", p.ns, p.name, p.ns)
			}
			st.say(p.name, "%s on %s: CNI ADD (%s) in %s, left alone: namespace %s is not ambient", p.addr, p.node, chain, p.rp.CNIAdd.Round(time.Millisecond), p.ns)
			continue
		}
		if !captured || !n.pinned(p.uid) {
			return fmt.Errorf("%s/%s: CNI ADD returned but the agent did not capture it (agent log: %s)", p.ns, p.name, filepath.Join(n.dir, "agent.log"))
		}
		st.say(p.name, "%s on %s: captured via CNI ADD (%s) in %s, ztunnel acked; identity %s", p.addr, p.node, chain, p.rp.CNIAdd.Round(time.Millisecond), p.id())
	}
	synced, err := m.waitSynced(ctx)
	if err != nil {
		return err
	}
	st.say("zmeshd", "%d ztunnels and %d zmesh-cni-agents connected and synced (/debug/syncz)", synced["ztunnel"], synced["zmesh-cni-agent"])
	st.say("zmeshd", "%d waypoint connected and synced, served its own Listener, Routes, Clusters and Endpoints by its identity", synced["router"])
	fmt.Fprintln(out)

	// 6. Traffic. The apps speak plain TCP; capture and ztunnel do the rest.
	wire, err := m.lan.Underlay.Capture("")
	if err != nil {
		return err
	}
	bobEcho := netip.AddrPortFrom(bob.addr, podapp.EchoPort)
	reply, err := call(ctx, alice, bobEcho, "hello bob")
	if err != nil {
		return fmt.Errorf("alice -> bob: %w", err)
	}
	st.say("alice", "-> %s: %q", bobEcho, reply)
	if !strings.Contains(reply, "from="+alice.addr.String()+":") {
		return fmt.Errorf("bob's app did not see alice's address: %q", reply)
	}
	vip := netip.MustParseAddrPort("10.96.0.10:9000")
	if reply, err = call(ctx, alice, vip, "hello echo service"); err != nil {
		return fmt.Errorf("alice -> service VIP: %w", err)
	}
	st.say("alice", "-> %s (service echo): %q", vip, reply)
	wire.Stop()
	frames, n := wire.Stats()
	if frames == 0 {
		return errors.New("the underlay capture saw nothing: it cannot vouch for anything")
	}
	if wire.Contains([]byte("hello bob")) || wire.Contains([]byte("pod=demo/bob")) {
		return errors.New("plaintext payload seen on the underlay")
	}
	st.say("wire", "%d frames, %d bytes on the underlay: no request or reply text (mTLS 1.3 records only)", frames, n)

	if _, err := call(ctx, mallory, bobEcho, "let me in"); err == nil {
		return errors.New("mallory reached bob despite the policy")
	}
	st.say("mallory", "-> %s: refused (AuthorizationPolicy echo-from-alice)", bobEcho)
	if _, err := call(ctx, legacy, bobEcho, "plaintext hello"); err == nil {
		return errors.New("plaintext reached bob despite STRICT")
	}
	st.say("legacy", "-> %s (plaintext, outside the mesh): refused (PeerAuthentication STRICT)", bobEcho)
	fmt.Fprintln(out)

	// 7. A policy edit: zmeshd sees the file, pushes, and the ztunnels
	// enforce it.
	denyAlice := filepath.Join(m.meshDir, "40-deny-alice.yaml")
	if err := os.WriteFile(denyAlice, []byte(denyAliceYAML), 0o644); err != nil {
		return err
	}
	start := time.Now()
	if err := waitFor(ctx, func() bool { _, err := call(ctx, alice, bobEcho, "still there?"); return err != nil }); err != nil {
		return errors.New("alice still reaches bob after a DENY policy naming her was written")
	}
	st.say("edit", "wrote %s (DENY from alice): alice -> bob refused %s later; DENY beats ALLOW", filepath.Base(denyAlice), time.Since(start).Round(10*time.Millisecond))
	if err := m.restartWithBrokenFile(ctx, st, denyAlice, alice, bobEcho); err != nil {
		return err
	}
	os.Remove(denyAlice)
	start = time.Now()
	if err := waitFor(ctx, func() bool { _, err := call(ctx, alice, bobEcho, "back?"); return err == nil }); err != nil {
		return errors.New("alice does not reach bob again after the DENY policy was removed")
	}
	st.say("edit", "removed it: alice -> bob answered again %s later", time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintln(out)

	// 8. A running pod joins the mesh: label its namespace in the YAML.
	if err := m.enrolLegacy(ctx, st, legacy, alice, bobEcho); err != nil {
		return err
	}
	fmt.Fprintln(out)

	// 9. A canary through the waypoint (L7).
	if err := m.canary(ctx, st, alice, webV1, wp); err != nil {
		return err
	}
	fmt.Fprintln(out)

	// 10. What bob's ztunnel saw: access log and metrics.
	zt2 := m.node(bob.node)
	if err := waitFor(ctx, func() bool { return len(zt2.ztunnel.LogRecords("connection complete")) >= 4 }); err != nil {
		return errors.New("node-2's ztunnel did not log the four connections")
	}
	for i, rec := range zt2.ztunnel.LogRecords("connection complete") {
		if i == 4 {
			break
		}
		st.say(zt2.name, "inbound %s -> %v: %s", source(rec), rec["dst.addr"], verdict(rec))
	}
	metrics, err := proc.HTTPGet(ctx, "http://"+zt2.ztMetrics+"/metrics")
	if err != nil {
		return err
	}
	shown := 0
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "istio_tcp_connections_closed_total{") && !strings.HasSuffix(line, " 0") && shown < 3 {
			st.say(zt2.name, "%s", shortMetric(line))
			shown++
		}
	}
	if shown == 0 {
		return errors.New("node-2's ztunnel exports no istio_tcp_connections_closed_total")
	}
	dump, err := proc.HTTPGet(ctx, "http://"+zt2.ztAdmin+"/config_dump")
	if err != nil {
		return err
	}
	if !strings.Contains(dump, bob.id()) {
		return errors.New("node-2's config_dump does not list bob's certificate")
	}
	st.say(zt2.name, "config_dump: %d bytes (workloads, services, policies, pods, certificates)", len(dump))
	fmt.Fprintln(out)
	st.say("done", "pods captured by the real CNI chain, plain TCP crossed nodes over mTLS with identities, policy refused the rest, edits took effect, a waypoint split a canary (%s, %s after the build)",
		time.Since(began).Round(100*time.Millisecond), time.Since(built).Round(100*time.Millisecond))
	if !stay {
		return nil
	}
	fmt.Fprintln(out)
	m.pokeHelp(out, alice, mallory, bob, legacy)
	<-ctx.Done()
	fmt.Fprintln(out)
	return nil
}

// synced counts the proxies zmeshd lists as synced on every type they
// subscribed to, by kind (the node id's part before "~").
func (m *mesh) synced(ctx context.Context) map[string]int {
	body, err := proc.HTTPGet(ctx, "http://"+m.zmeshdMon+"/debug/syncz")
	if err != nil {
		return nil
	}
	var proxies []struct {
		ID    string `json:"id"`
		Types []struct {
			State string `json:"state"`
		} `json:"types"`
	}
	if json.Unmarshal([]byte(body), &proxies) != nil {
		return nil
	}
	out := map[string]int{}
	for _, p := range proxies {
		ok := len(p.Types) > 0
		for _, t := range p.Types {
			ok = ok && t.State == "SYNCED"
		}
		if kind, _, _ := strings.Cut(p.ID, "~"); ok {
			out[kind]++
		}
	}
	return out
}

// waitSynced waits until zmeshd lists every ztunnel, agent and waypoint
// as synced, and returns the counts by kind.
func (m *mesh) waitSynced(ctx context.Context) (map[string]int, error) {
	var synced map[string]int
	if err := waitFor(ctx, func() bool {
		synced = m.synced(ctx)
		return synced["ztunnel"] == len(m.nodes) && synced["zmesh-cni-agent"] == len(m.nodes) && synced["router"] == m.runningWaypoints()
	}); err != nil {
		return nil, fmt.Errorf("zmeshd's /debug/syncz does not list every ztunnel, agent and waypoint as synced: %v", synced)
	}
	return synced, nil
}

// enrolLegacy labels namespace legacy ambient in the YAML directory; zmeshd
// pushes, the agent (no-cluster source) enrols the running pod, and legacy
// reaches a STRICT mesh pod with its own identity.
func (m *mesh) enrolLegacy(ctx context.Context, st story, legacy, alice *pod, bobEcho netip.AddrPort) error {
	aliceEcho := netip.AddrPortFrom(alice.addr, podapp.EchoPort)
	if _, err := call(ctx, legacy, aliceEcho, "plaintext hello"); err == nil {
		return errors.New("legacy (plaintext) reached alice despite STRICT")
	}
	st.say("legacy", "-> %s (alice, plaintext): refused (STRICT)", aliceEcho)
	nsFile := filepath.Join(m.meshDir, "00-namespaces.yaml")
	b, err := os.ReadFile(nsFile)
	if err != nil {
		return err
	}
	const plain = "metadata:\n  name: legacy\n"
	if !strings.Contains(string(b), plain) {
		return fmt.Errorf("%s: no namespace legacy to label", nsFile)
	}
	edited := strings.Replace(string(b), plain, plain+"  labels:\n    istio.io/dataplane-mode: ambient\n", 1)
	n := m.node(legacy.node)
	pid := legacy.rp.Pid()
	start := time.Now()
	if err := os.WriteFile(nsFile, []byte(edited), 0o644); err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool { return len(n.agent.LogRecords("pod captured", "pod", "legacy/legacy")) > 0 }); err != nil {
		return errors.New("the agent did not enrol the running pod legacy after its namespace was labelled ambient")
	}
	captured := time.Since(start)
	var reply string
	if err := waitFor(ctx, func() bool { reply, err = call(ctx, legacy, aliceEcho, "hello from legacy"); return err == nil }); err != nil {
		return fmt.Errorf("legacy does not reach alice after joining the mesh: %v", err)
	}
	answered := time.Since(start)
	if !n.pinned(legacy.uid) || legacy.rp.Pid() != pid || n.runner.Pod(legacy.ns, legacy.name) != legacy.rp {
		return errors.New("legacy was not enrolled in place (no capture pinned, or the pod was restarted)")
	}
	st.say("enrol", "labelled namespace legacy istio.io/dataplane-mode: ambient in %s", filepath.Base(nsFile))
	st.say("enrol", "agent enrolled the running pod legacy %s later (no restart: app pid %d), legacy -> alice answered %s later: %q",
		captured.Round(10*time.Millisecond), pid, answered.Round(10*time.Millisecond), reply)
	want := legacy.id()
	if err := waitFor(ctx, func() bool {
		return len(n.ztunnel.LogRecords("connection complete", "src.identity", want, "dst.addr", aliceEcho.String())) > 0
	}); err != nil {
		return fmt.Errorf("%s's ztunnel logged no connection from %s to alice", n.name, want)
	}
	st.say(n.name, "inbound %s -> %s: allowed (mTLS, STRICT satisfied)", want, aliceEcho)
	if _, err := call(ctx, legacy, bobEcho, "and bob?"); err == nil {
		return errors.New("legacy reached bob, whose policy admits only alice")
	}
	st.say("legacy", "-> %s (bob): still refused, now by identity: echo-from-alice admits only alice", bobEcho)
	return nil
}

func (m *mesh) pokeHelp(out io.Writer, alice, mallory, bob, legacy *pod) {
	zmeshctl := filepath.Join(m.bin, "zmeshctl")
	n1, n2 := m.nodes[0], m.nodes[1]
	fmt.Fprintln(out, "The mesh is up. Try (as root, in another terminal):")
	fmt.Fprintf(out, "  # alice calls the echo service through the mesh (pod %s is network namespace %s)\n", alice.name, alice.rp.NS.Name)
	fmt.Fprintf(out, "  ip netns exec %s curl -s http://10.96.0.10/\n", alice.rp.NS.Name)
	fmt.Fprintf(out, "  ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/%d; echo hello >&3; head -2 <&3'\n", alice.rp.NS.Name, bob.addr, podapp.EchoPort)
	fmt.Fprintf(out, "  # alice calls service web: through the waypoint, 90%% v1, 10%% v2 (edit the VirtualService in 55-web-routes.yaml)\n")
	fmt.Fprintf(out, "  ip netns exec %s curl -s http://%s/\n", alice.rp.NS.Name, webVIP.Addr())
	fmt.Fprintf(out, "  # mallory is refused by policy\n")
	fmt.Fprintf(out, "  ip netns exec %s curl -sS --max-time 3 http://%s:%d/\n", mallory.rp.NS.Name, bob.addr, podapp.HTTPPort)
	fmt.Fprintf(out, "  # legacy joined the mesh: it reaches alice as %s\n", legacy.id())
	fmt.Fprintf(out, "  ip netns exec %s curl -s http://%s:%d/\n", legacy.rp.NS.Name, alice.addr, podapp.HTTPPort)
	fmt.Fprintf(out, "  # what each ztunnel knows, and whether the proxies are in sync with zmeshd\n")
	fmt.Fprintf(out, "  %s ztunnel-config all --ztunnel-admin %s    # node-1\n", zmeshctl, n1.ztAdmin)
	fmt.Fprintf(out, "  %s ztunnel-config workloads --ztunnel-admin %s    # node-2\n", zmeshctl, n2.ztAdmin)
	fmt.Fprintf(out, "  %s proxy-status --zmeshd http://%s\n", zmeshctl, m.zmeshdMon)
	fmt.Fprintf(out, "  # each node's CNI chain, as zmesh-cni-agent left it\n")
	fmt.Fprintf(out, "  cat %s\n", filepath.Join(n1.cniConf, noderunner.PrimaryConflist))
	fmt.Fprintf(out, "  # edit the mesh: zmeshd applies a saved change within a second; a Pod added to\n")
	fmt.Fprintf(out, "  # 10-pods.yaml (spec.nodeName node-1, status.podIP in %s) is started through CNI\n", n1.cidr)
	fmt.Fprintf(out, "  $EDITOR %s\n", filepath.Join(m.meshDir, "30-policies.yaml"))
	fmt.Fprintf(out, "  tail -f %s %s\n", filepath.Join(m.tmp, "zmeshd.log"), filepath.Join(n2.dir, "ztunnel.log"))
	fmt.Fprintln(out, "Press Ctrl-C to remove everything.")
}

const denyAliceYAML = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-alice
  namespace: demo
spec:
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/demo/sa/alice"]
`

// copyMesh writes the shipped YAML to dst.
func copyMesh(dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return fs.WalkDir(meshFiles, "mesh", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := meshFiles.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, filepath.Base(path)), b, 0o644)
	})
}

// podsOf lists the snapshot's pods with an address, and whether each is
// ambient by its labels (what zmeshd decides, and the agent learns from
// it).
func podsOf(s *model.Snapshot) []*pod {
	var out []*pod
	for _, p := range s.Pods {
		addr, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		mode := p.Labels["istio.io/dataplane-mode"]
		if ns := s.Namespace(p.Namespace); mode == "" && ns != nil {
			mode = ns.Labels["istio.io/dataplane-mode"]
		}
		out = append(out, &pod{name: p.Name, ns: p.Namespace, sa: sa, node: p.Spec.NodeName, uid: string(p.UID), addr: addr, ambient: mode == "ambient"})
	}
	return out
}

// call connects from a pod (plain TCP: capture takes it), sends msg,
// half-closes and reads the reply: the app's greeting, then the echo.
func call(ctx context.Context, from *pod, dst netip.AddrPort, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := from.rp.NS.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(msg + "\n"))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		err = errNoReply
	}
	return strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " | "), err
}

func source(rec map[string]any) string {
	if src := rec["src.identity"]; src != nil {
		return fmt.Sprint(src)
	}
	return "(no identity: plaintext from " + fmt.Sprint(rec["src.addr"]) + ")"
}

func verdict(rec map[string]any) string {
	if r := rec["reason"]; r != nil {
		return fmt.Sprint(r)
	}
	return "allowed"
}

// shortMetric keeps a metric line's telling labels.
func shortMetric(line string) string {
	keep := []string{"reporter", "source_principal", "destination_principal", "destination_service", "connection_security_policy", "response_flags"}
	open, end := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
	var parts []string
	for _, l := range strings.Split(line[open+1:end], ",") {
		for _, k := range keep {
			if strings.HasPrefix(l, k+"=") {
				parts = append(parts, l)
			}
		}
	}
	return line[:open] + "{" + strings.Join(parts, ",") + "}" + line[end+1:]
}
