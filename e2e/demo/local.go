package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/e2e/demo/localapi"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/proc"
)

// Session is what a running local mesh tells `zmeshctl local status` (and
// tests) about itself, as JSON in its session file.
type Session struct {
	Pid int `json:"pid"`
	// Input is the user's directory; Dir the session's temporary
	// directory (the applied YAML in Dir/mesh, logs, node directories).
	Input string `json:"input"`
	Dir   string `json:"dir"`
	// Zmeshd is zmeshd's monitoring address (/debug/statusz, /debug/syncz).
	Zmeshd    string            `json:"zmeshd"`
	Objects   []localapi.Object `json:"objects"`
	Pods      []SessionPod      `json:"pods"`
	Services  []SessionService  `json:"services"`
	Waypoints []SessionWaypoint `json:"waypoints"`
	Nodes     []SessionNode     `json:"nodes"`
	Started   time.Time         `json:"started"`
}

// SessionPod is a running pod: where it runs, and the network namespace
// to enter it with (ip netns exec).
type SessionPod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Node      string            `json:"node"`
	IP        string            `json:"ip"`
	NetNS     string            `json:"netns"`
	Ambient   bool              `json:"ambient"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Owner is the workload controller's object, "Deployment/curl".
	Owner string `json:"owner,omitempty"`
}

// SessionService is a Service with its cluster IP.
type SessionService struct {
	Namespace string  `json:"namespace"`
	Name      string  `json:"name"`
	ClusterIP string  `json:"clusterIP"`
	Ports     []int32 `json:"ports"`
}

// SessionWaypoint is a waypoint Gateway's running proxy, or why the
// Gateway is refused (Rejected; then the proxy listed, if any, is the one
// of its last good version).
type SessionWaypoint struct {
	Namespace string `json:"namespace"`
	Gateway   string `json:"gateway"`
	Node      string `json:"node,omitempty"`
	IP        string `json:"ip,omitempty"`
	Pid       int    `json:"pid,omitempty"`
	Rejected  string `json:"rejected,omitempty"`
}

// lastGood says, for a rejected Gateway's note, whether the waypoint of
// its last good version runs.
func (w SessionWaypoint) lastGood() string {
	if w.Pid == 0 {
		return ""
	}
	return fmt.Sprintf(" (the waypoint of its last good version keeps running, pid %d)", w.Pid)
}

// SessionNode is a node with its pod range and logs.
type SessionNode struct {
	Name    string `json:"name"`
	PodCIDR string `json:"podCIDR"`
	Dir     string `json:"dir"`
}

// DefaultSession is where a local mesh writes its session file unless told.
const DefaultSession = "/run/zmesh-local/session.json"

// runLocal runs a user's YAML directory on the local mesh: localapi
// applies it (pods scheduled and addressed, cluster IPs given), zmeshd
// reads the result, the nodes run its pods and waypoints, and the session
// file says what runs where until ctx ends; then everything goes.
func runLocal(ctx context.Context, binDir, input, sessionPath string, out io.Writer) (err error) {
	st := story{out}
	if err := preflight(binDir == ""); err != nil {
		st.fail(err)
		return err
	}
	input, err = filepath.Abs(input)
	if err != nil {
		return err
	}
	madeDir, err := claimSession(sessionPath)
	if err != nil {
		st.fail(err)
		return err
	}
	fmt.Fprintf(out, "zmesh local: %s on a local mesh of %d nodes (no cluster); Ctrl-C removes everything\n\n", input, len(nodeNames))
	m, err := newMesh("zmesh-local-")
	if err != nil {
		st.fail(err)
		return err
	}
	runCtx, stopRunners := context.WithCancel(context.Background())
	m.stopRunners = stopRunners
	hosts := map[string]bool{} // the /etc/netns directories written
	_, statErr := os.Stat("/etc/netns")
	etcNetnsOurs := errors.Is(statErr, os.ErrNotExist)
	defer func() {
		os.Remove(sessionPath)
		if madeDir {
			os.Remove(filepath.Dir(sessionPath))
		}
		err = m.finish(ctx, st, err, func() (left []string) {
			for d := range hosts {
				os.RemoveAll(d)
			}
			if etcNetnsOurs {
				os.Remove("/etc/netns") // only if empty: another user's entries stay
			}
			for d := range hosts {
				if _, serr := os.Stat(d); serr == nil {
					left = append(left, d)
				}
			}
			if _, serr := os.Stat(sessionPath); serr == nil {
				left = append(left, "session file "+sessionPath)
			}
			return left
		})
	}()
	if err := m.binaries(ctx, st, binDir); err != nil {
		return err
	}

	// 1. Apply the YAML as an API server and its controllers would.
	var nodes []localapi.Node
	for i, name := range nodeNames {
		nodes = append(nodes, localapi.Node{Name: name, PodCIDR: netenv.PodCIDR(i)})
	}
	opts := localapi.Options{Nodes: nodes, ServiceCIDR: serviceCIDR}
	c, err := localapi.Read(input, opts)
	if err != nil {
		return err
	}
	m.meshDir = filepath.Join(m.tmp, "mesh")
	if err := c.Write(m.meshDir, nil); err != nil {
		return err
	}
	stored, rejected := 0, 0
	for _, o := range c.Objects {
		if o.Rejected != "" {
			rejected++
			st.note("✗ %s %s: rejected (%s document %d): %s", o.Kind, objName(o.Namespace, o.Name), o.File, o.Doc, o.Rejected)
			continue
		}
		stored++
	}
	st.say("apply", "%d objects stored, %d rejected; %d pods scheduled over %s; the applied objects are in %s", stored, rejected, len(c.Pods), strings.Join(nodeNames, ", "), m.meshDir)
	u, err := (&dir.Source{Dir: m.meshDir, Log: quiet, StateDir: filepath.Join(m.tmp, "applied-state")}).Load()
	if err != nil {
		return err
	}
	if len(u.Errors) > 0 {
		return fmt.Errorf("zmeshd's directory source rejects the applied YAML: %v", u.Errors)
	}
	if err := m.setWaypoints(u.Snapshot.Gateways); err != nil {
		return err
	}

	// 2. The mesh, as the demo runs it.
	if err := m.network(); err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	}
	if err := m.startZmeshd(ctx); err != nil {
		return err
	}
	st.say("zmeshd", "pid %d ready on the applied YAML; /debug/statusz and /debug/syncz on %s", m.zmeshd.Pid(), m.zmeshdMon)
	for _, n := range m.nodes {
		if err := m.startNode(ctx, n); err != nil {
			return err
		}
		st.say(n.name, "pods %s: zmesh-cni-agent pid %d chained zmesh-cni (%s), ztunnel pid %d ready", n.cidr, n.agent.Pid(), strings.Join(n.chain(), " → "), n.ztunnel.Pid())
	}
	for _, n := range m.nodes {
		if err := m.startPods(ctx, n, runCtx); err != nil {
			return fmt.Errorf("%s: start pods: %w", n.name, err)
		}
	}
	if _, err := m.waitSynced(ctx); err != nil {
		return err
	}

	// 3. What runs where, in the session file and on the terminal.
	s := &Session{Pid: os.Getpid(), Input: input, Dir: m.tmp, Zmeshd: m.zmeshdMon, Objects: c.Objects, Started: time.Now().UTC()}
	for _, n := range m.nodes {
		s.Nodes = append(s.Nodes, SessionNode{Name: n.name, PodCIDR: n.cidr.String(), Dir: n.dir})
	}
	if err := m.fillSession(s, c, u.Snapshot, hosts); err != nil {
		return err
	}
	for _, p := range s.Pods {
		mode := "ambient: captured, mTLS via ztunnel"
		if !p.Ambient {
			mode = "not ambient: its namespace has no istio.io/dataplane-mode=ambient"
		}
		st.say("pod", "%-40s %s %-12s netns %s (%s)", p.Namespace+"/"+p.Name, p.Node, p.IP, p.NetNS, mode)
	}
	for _, svc := range s.Services {
		st.say("service", "%-40s %s ports %v", svc.Namespace+"/"+svc.Name, svc.ClusterIP, svc.Ports)
	}
	for _, w := range s.Waypoints {
		if w.Rejected != "" {
			st.note("✗ Gateway %s/%s: rejected: %s", w.Namespace, w.Gateway, w.Rejected)
			continue
		}
		st.say("waypoint", "%-40s %s %s pid %d, synced with zmeshd", w.Namespace+"/"+w.Gateway, w.Node, w.IP, w.Pid)
	}
	if err := writeSession(sessionPath, s); err != nil {
		return err
	}
	fmt.Fprintln(out)
	zmeshctl := "zmeshctl"
	if _, err := os.Stat(filepath.Join(m.bin, "zmeshctl")); err == nil {
		zmeshctl = filepath.Join(m.bin, "zmeshctl")
	}
	fmt.Fprintf(out, "The mesh is up. Try (as root, in another terminal):\n")
	fmt.Fprintf(out, "  %s local status --session %s\n", zmeshctl, sessionPath)
	if len(s.Pods) > 0 && len(s.Services) > 0 {
		// A client pod of Istio's samples if there is one, and a Service
		// that is not its own.
		p, svc := s.Pods[0], s.Services[0]
		for _, q := range s.Pods {
			if q.Labels["app"] == "curl" || q.Labels["app"] == "sleep" {
				p = q
			}
		}
		for _, v := range s.Services {
			if v.Name != p.Labels["app"] && v.Namespace == p.Namespace {
				svc = v
				break
			}
		}
		port := int32(80)
		if len(svc.Ports) > 0 {
			port = svc.Ports[0]
		}
		fmt.Fprintf(out, "  %s local exec --session %s %s -- curl -s http://%s:%d/\n", zmeshctl, sessionPath, p.Name, svc.Name, port)
		fmt.Fprintf(out, "  ip netns exec %s curl -s http://%s:%d/   # the same\n", p.NetNS, svc.Name, port)
	}
	fmt.Fprintf(out, "  tail -f %s %s\n", filepath.Join(m.tmp, "zmeshd.log"), filepath.Join(m.tmp, "node-*", "ztunnel.log"))
	fmt.Fprintf(out, "Edits to %s are applied as they are saved. Press Ctrl-C to remove everything.\n", input)
	m.followInput(ctx, st, input, c, opts, s, sessionPath, hosts)
	fmt.Fprintln(out)
	return nil
}

// followInput applies the input directory again whenever it changes (a
// change is taken once two reads half a second apart agree), as kubectl
// apply would: what did not change keeps running, pods of a changed
// template are replaced, waypoints start and stop with their Gateways (the
// waypoint node's runner reconciles them as the deployer would), and the
// session file follows, also between changes (a waypoint the runner
// restarts, or a Gateway it rejects, after the apply). It returns when ctx
// ends.
func (m *mesh) followInput(ctx context.Context, st story, input string, c *localapi.Cluster, opts localapi.Options, s *Session, sessionPath string, hosts map[string]bool) {
	last, pending := inputSum(input), ""
	said := map[string]bool{} // the rejections told
	tell := func() {
		for _, w := range s.Waypoints {
			if k := w.Namespace + "/" + w.Gateway + ": " + w.Rejected; w.Rejected != "" && !said[k] {
				said[k] = true
				st.note("✗ Gateway %s/%s: rejected: %s%s", w.Namespace, w.Gateway, w.Rejected, w.lastGood())
			}
		}
	}
	for _, w := range s.Waypoints {
		said[w.Namespace+"/"+w.Gateway+": "+w.Rejected] = true // told at the start
	}
	refreshed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		if time.Since(refreshed) > 2*time.Second {
			refreshed = time.Now()
			m.refreshSession(s, c, sessionPath, hosts)
			tell()
		}
		sum := inputSum(input)
		if sum == last {
			pending = ""
			continue
		}
		if sum != pending {
			pending = sum
			continue
		}
		last, pending = sum, ""
		o := opts
		o.Previous = c
		next, err := localapi.Read(input, o)
		if err == nil {
			// A new waypoint's token is known to zmeshd before its
			// Gateway reaches the runner.
			err = m.setWaypoints(next.Gateways)
		}
		if err == nil {
			err = next.Write(m.meshDir, c)
		}
		if err != nil {
			st.note("✗ %s changed but cannot be applied: %v (the last apply stays)", input, err)
			continue
		}
		c = next
		rejected := 0
		for _, o := range c.Objects {
			if o.Rejected != "" {
				rejected++
				st.note("✗ %s %s: rejected (%s document %d): %s", o.Kind, objName(o.Namespace, o.Name), o.File, o.Doc, o.Rejected)
			}
		}
		st.say("apply", "%s changed: applied again, %d objects (%d rejected), %d pods", input, len(c.Objects), rejected, len(c.Pods))
		var ferr error
		// A waypoint starting takes a CNI ADD, its certificate and its
		// first configuration: more than a pod.
		proc.WaitFor(ctx, time.Minute, func() bool {
			u, err := (&dir.Source{Dir: m.meshDir, Log: quiet, StateDir: filepath.Join(m.tmp, "applied-state")}).Load()
			if err != nil {
				ferr = err
				return false
			}
			ferr = m.fillSession(s, c, u.Snapshot, hosts)
			return ferr == nil
		})
		if ferr != nil {
			st.note("✗ after applying again: %v", ferr)
		}
		tell()
		if err := writeSession(sessionPath, s); err != nil {
			st.note("✗ session file: %v", err)
		}
	}
}

// refreshSession fills s again from what runs now and rewrites the
// session file if that changed; a mesh caught mid-change is left for the
// next refresh.
func (m *mesh) refreshSession(s *Session, c *localapi.Cluster, sessionPath string, hosts map[string]bool) {
	u, err := (&dir.Source{Dir: m.meshDir, Log: quiet, StateDir: filepath.Join(m.tmp, "applied-state")}).Load()
	if err != nil {
		return
	}
	before, _ := json.Marshal(s)
	next := *s
	if m.fillSession(&next, c, u.Snapshot, hosts) != nil {
		return
	}
	if after, _ := json.Marshal(&next); string(after) != string(before) {
		*s = next
		writeSession(sessionPath, s)
	}
}

// inputSum fingerprints the YAML files of the input directory.
func inputSum(dir string) string {
	h := sha256.New()
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") && path != dir {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml", ".json":
			b, _ := os.ReadFile(path)
			fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}

// fillSession lists in s the Services of snap and where c's pods and the
// waypoints run; it fails if one of them does not run. It writes each
// pod's hosts file, noting its directory in hosts.
func (m *mesh) fillSession(s *Session, c *localapi.Cluster, snap *model.Snapshot, hosts map[string]bool) error {
	s.Objects, s.Services, s.Pods, s.Waypoints = c.Objects, nil, nil, nil
	for _, svc := range snap.Services {
		ss := SessionService{Namespace: svc.Namespace, Name: svc.Name, ClusterIP: svc.Spec.ClusterIP}
		for _, p := range svc.Spec.Ports {
			ss.Ports = append(ss.Ports, p.Port)
		}
		s.Services = append(s.Services, ss)
	}
	ambient := map[string]bool{}
	for _, p := range podsOf(snap) {
		ambient[p.ns+"/"+p.name] = p.ambient
	}
	for _, p := range c.Pods {
		n := m.node(p.Spec.NodeName)
		rp := n.runner.Pod(p.Namespace, p.Name)
		if rp == nil {
			return fmt.Errorf("pod %s/%s did not start on %s (runner log: %s)", p.Namespace, p.Name, n.name, filepath.Join(n.dir, "noderunner.log"))
		}
		s.Pods = append(s.Pods, SessionPod{Namespace: p.Namespace, Name: p.Name, Node: n.name, IP: rp.IP.String(), NetNS: rp.NS.Name,
			Ambient: ambient[p.Namespace+"/"+p.Name], Labels: p.Labels, Owner: ownerOf(c, p.Namespace, p.Name)})
	}
	wpNode := m.node(waypointNode)
	for _, g := range snap.Gateways {
		if g.Spec.GatewayClassName != deployer.ClassName {
			continue
		}
		gw := types.NamespacedName{Namespace: g.Namespace, Name: g.Name}
		w := SessionWaypoint{Namespace: gw.Namespace, Gateway: gw.Name, Rejected: wpNode.runner.WaypointRejected(gw.Namespace, gw.Name)}
		rp := wpNode.runner.Waypoint(gw.Namespace, gw.Name)
		if rp == nil && w.Rejected == "" {
			return fmt.Errorf("the waypoint of Gateway %s did not start (runner log: %s)", gw, filepath.Join(wpNode.dir, "noderunner.log"))
		}
		if rp != nil {
			w.Node, w.IP, w.Pid = wpNode.name, rp.IP.String(), rp.Pid()
		}
		s.Waypoints = append(s.Waypoints, w)
	}
	slices.SortFunc(s.Waypoints, func(a, b SessionWaypoint) int {
		return strings.Compare(a.Namespace+"/"+a.Gateway, b.Namespace+"/"+b.Gateway)
	})
	// Service names resolve in the pods as in a cluster, for ip netns exec
	// (which mounts /etc/netns/<name>/hosts over /etc/hosts).
	for _, p := range s.Pods {
		d := filepath.Join("/etc/netns", p.NetNS)
		hosts[d] = true
		if err := writeHosts(d, p.Namespace, s.Services); err != nil {
			return err
		}
	}
	return nil
}

func objName(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// ownerOf names the input object a pod came from ("Deployment/curl"), or
// "" for a bare pod.
func ownerOf(c *localapi.Cluster, ns, pod string) string {
	for _, o := range c.Objects {
		switch o.Kind {
		case "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet":
			if o.Namespace == ns && strings.HasPrefix(pod, o.Name+"-") && o.Rejected == "" {
				return o.Kind + "/" + o.Name
			}
		}
	}
	return ""
}

// claimSession refuses to start over a live session's file, and says
// whether it made the file's directory (removed with the session).
func claimSession(path string) (madeDir bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, os.ErrNotExist) {
			return true, os.MkdirAll(filepath.Dir(path), 0o755)
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var s Session
	if json.Unmarshal(b, &s) == nil && s.Pid > 0 && syscall.Kill(s.Pid, 0) == nil {
		return false, fmt.Errorf("a local mesh is already up (pid %d, session %s): stop it with Ctrl-C, or use another --session", s.Pid, path)
	}
	return false, os.Remove(path) // a crashed session's
}

func writeSession(path string, s *Session) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeHosts gives a pod the names of the Services as cluster DNS would:
// name.namespace, name.namespace.svc and name.namespace.svc.cluster.local,
// and the bare name for its own namespace.
func writeHosts(d, ns string, svcs []SessionService) error {
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, s := range svcs {
		if _, err := netip.ParseAddr(s.ClusterIP); err != nil {
			continue
		}
		names := []string{s.Name + "." + s.Namespace, s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace + ".svc.cluster.local"}
		if s.Namespace == ns {
			names = append([]string{s.Name}, names...)
		}
		fmt.Fprintf(&b, "%s %s\n", s.ClusterIP, strings.Join(names, " "))
	}
	if old, err := os.ReadFile(filepath.Join(d, "hosts")); err == nil && string(old) == b.String() {
		return nil // the session is refreshed every few seconds
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "hosts"), []byte(b.String()), 0o644)
}
