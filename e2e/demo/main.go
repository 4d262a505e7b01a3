// Command demo runs zmesh's L4 mesh on one machine with no cluster: zmeshd
// reading a directory of Kubernetes/Istio YAML (the mesh/ directory beside
// this file), two "nodes" each with a CNI agent (eBPF capture in every
// ambient pod) and a ztunnel process fed by zmeshd over delta xDS, and pods
// in their own network namespaces on a bridge. Plain TCP from the pods is
// captured and tunnelled over HBONE; the demo shows who reached whom with
// which identity, what policy refused, that nothing readable crossed the
// wire, a policy edit taking effect, and the ztunnels' metrics. It removes
// everything it made.
//
// It needs root (network namespaces, eBPF). Run it with `make demo`.
package main

import (
	"bufio"
	"bytes"
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
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/term"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

//go:embed mesh/*.yaml
var meshFiles embed.FS

// Fixed loopback ports of the demo's processes.
const (
	zmeshdXDS        = "127.0.0.1:25010"
	zmeshdMonitoring = "127.0.0.1:25014"
	ztunnelPortBase  = 25100 // node i: admin base+100i, metrics +20, readiness +21
)

func main() {
	bin := flag.String("bin", "", "directory holding prebuilt zmeshd and ztunnel (default: go build them)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// At a terminal the mesh stays up after the tour until Ctrl-C; in CI
	// (stdin not a terminal) the demo exits after it.
	stay := term.IsTerminal(int(os.Stdin.Fd()))
	if err := run(ctx, *bin, os.Stdout, stay); err != nil {
		fmt.Fprintf(os.Stderr, "  ✗ %v\ndemo failed\n", err)
		os.Exit(1)
	}
}

type pod struct {
	name, ns, sa, node string
	ambient            bool
	netns              *netenv.NS
	addr               netip.Addr
}

func (p *pod) id() string { return identity.MustWorkloadID(td.Name(), p.ns, p.sa).String() }

type story struct{ out io.Writer }

// say prints a step that passed, with its evidence.
func (s story) say(who, format string, args ...any) {
	fmt.Fprintf(s.out, "  ✓ %-8s %s\n", who, fmt.Sprintf(format, args...))
}

// note prints a line that is not a check.
func (s story) note(format string, args ...any) {
	fmt.Fprintf(s.out, "    %s\n", fmt.Sprintf(format, args...))
}

func run(ctx context.Context, binDir string, out io.Writer, stay bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and loads eBPF: it needs root (try: sudo make demo)")
	}
	st := story{out}
	// Library logs would interleave with the story; keep errors only.
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	slog.SetDefault(quiet)
	fmt.Fprintln(out, "zmesh demo: an L4 ambient mesh on two nodes (no cluster needed)")
	fmt.Fprintln(out)

	tmp, err := os.MkdirTemp("", "zmesh-demo-")
	if err != nil {
		return err
	}
	if os.Getenv("ZMESH_DEMO_KEEP") == "" {
		defer os.RemoveAll(tmp)
	}
	if binDir == "" {
		binDir = filepath.Join(tmp, "bin")
		st.note("building zmeshd, ztunnel and zmeshctl (go build ./cmd/...)")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", binDir+"/", "github.com/zmesh/zmesh/cmd/zmeshd", "github.com/zmesh/zmesh/cmd/ztunnel", "github.com/zmesh/zmesh/cmd/zmeshctl")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build: %w", err)
		}
	}

	// 1. The mesh's config: Kubernetes and Istio YAML in a directory.
	meshDir := filepath.Join(tmp, "mesh")
	if err := copyMesh(meshDir); err != nil {
		return err
	}
	u, err := (&dir.Source{Dir: meshDir}).Load()
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
	st.say("config", "%s: namespaces demo (ambient) and legacy, 4 pods, service echo, STRICT mTLS, echo only from alice", meshDir)

	// 2. The network: an underlay bridge and one namespace per pod, at the
	// address its YAML gives.
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.44.0.0/24"))
	if err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	}
	defer func() {
		lan.Close()
		st.say("cleanup", "network namespaces removed (%d left)", len(netenv.Leftovers()))
	}()
	for _, p := range pods {
		if p.netns, err = lan.HostAt(p.name, p.addr); err != nil {
			return err
		}
	}

	// 3. zmeshd: reads the directory, serves xDS and the CA. Each node's
	// ztunnel has a token that binds it to its node.
	tokens := filepath.Join(tmp, "tokens")
	if err := os.WriteFile(tokens, []byte(
		"token-ztunnel-node-1 spiffe://cluster.local/ns/istio-system/sa/ztunnel node-1\n"+
			"token-ztunnel-node-2 spiffe://cluster.local/ns/istio-system/sa/ztunnel node-2\n"), 0o600); err != nil {
		return err
	}
	caDir := filepath.Join(tmp, "ca")
	zd, err := startProc(ctx, filepath.Join(binDir, "zmeshd"), filepath.Join(tmp, "zmeshd.log"),
		"http://"+zmeshdMonitoring+"/ready", "ready",
		"--config-dir", meshDir, "--tokens-file", tokens, "--ca-dir", caDir,
		"--xds-address", zmeshdXDS, "--secure-address", "", "--monitoring-address", zmeshdMonitoring)
	if err != nil {
		return fmt.Errorf("zmeshd: %w", err)
	}
	defer zd.stop()
	st.say("zmeshd", "pid %d ready: delta xDS + CA on %s, /debug/syncz on %s", zd.cmd.Process.Pid, zmeshdXDS, zmeshdMonitoring)

	// 4. Per node: the CNI agent (eBPF capture + ZDS) and a ztunnel process.
	members := agent.MembershipFunc(func(ns, name string) (string, bool) {
		p := byName[name]
		if p == nil || !p.ambient || p.ns != ns {
			return "", false
		}
		return p.sa, true
	})
	zts := map[string]*proc{}
	nodes := map[string]*noderunner.Node{}
	for i, name := range []string{"node-1", "node-2"} {
		ndir := filepath.Join(tmp, name)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return err
		}
		n, err := noderunner.Start(name, ndir, members, lan.Underlay.Handle(), quiet)
		if err != nil {
			return fmt.Errorf("%s: start the CNI agent: %w (the kernel needs BPF: CONFIG_BPF_SYSCALL and a bpffs mount)", name, err)
		}
		defer n.Close()
		nodes[name] = n
		tokFile := filepath.Join(ndir, "token")
		if err := os.WriteFile(tokFile, []byte("token-ztunnel-"+name), 0o600); err != nil {
			return err
		}
		base := ztunnelPortBase + 100*i
		zt, err := startProc(ctx, filepath.Join(binDir, "ztunnel"), filepath.Join(ndir, "ztunnel.log"),
			fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", base+21), "ready",
			"--node", name, "--zds-socket", n.ZDSPath,
			"--xds-address", zmeshdXDS, "--plaintext-control-plane",
			"--root-cert", filepath.Join(caDir, identity.FileRootCert), "--token-file", tokFile, "--drain-grace", "2s",
			"--admin-address", fmt.Sprintf("127.0.0.1:%d", base),
			"--metrics-address", fmt.Sprintf("127.0.0.1:%d", base+20),
			"--readiness-address", fmt.Sprintf("127.0.0.1:%d", base+21))
		if err != nil {
			return fmt.Errorf("%s ztunnel: %w", name, err)
		}
		defer zt.stop()
		zt.base = base
		zts[name] = zt
		st.say(name, "ztunnel pid %d ready, config from zmeshd (admin 127.0.0.1:%d, metrics :%d)", zt.cmd.Process.Pid, base, base+20)
	}
	for _, p := range pods {
		if !p.ambient {
			st.say("net", "%-7s %s  on %s, not in the mesh (namespace %s is not ambient)", p.name, p.addr, p.node, p.ns)
			continue
		}
		np := noderunner.Pod{UID: string(model.FilePodUID(p.ns, p.name)), Name: p.name, Namespace: p.ns, NetnsPath: "/run/netns/" + p.netns.Name, IPs: []string{p.addr.String()}}
		if _, err := nodes[p.node].Add(ctx, np); err != nil {
			return fmt.Errorf("enrol %s: %w (capture needs eBPF sk_lookup programs: Linux 5.9 or later)", p.name, err)
		}
		defer nodes[p.node].Del(context.Background(), np)
		st.say("net", "%-7s %s  on %s, captured (eBPF sk_lookup), identity %s", p.name, p.addr, p.node, p.id())
	}
	app, err := bob.netns.Listen("tcp", netip.AddrPortFrom(bob.addr, 8080).String())
	if err != nil {
		return err
	}
	defer app.Close()
	go serveApp(app)
	syncz, err := httpGet(ctx, "http://"+zmeshdMonitoring+"/debug/syncz")
	if err != nil {
		return err
	}
	st.say("zmeshd", "%d ztunnels connected and synced (/debug/syncz)", strings.Count(syncz, `"state": "SYNCED"`)/2)
	fmt.Fprintln(out)

	// 5. Traffic. The apps speak plain TCP; capture and ztunnel do the rest.
	wire, err := lan.Underlay.Capture("")
	if err != nil {
		return err
	}
	bobApp := netip.AddrPortFrom(bob.addr, 8080)
	reply, err := call(ctx, alice, bobApp, "hello bob")
	if err != nil {
		return fmt.Errorf("alice -> bob: %w", err)
	}
	st.say("alice", "-> %s: %q", bobApp, reply)
	if !strings.Contains(reply, "from "+alice.addr.String()) {
		return fmt.Errorf("bob's app did not see alice's address: %q", reply)
	}
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	if reply, err = call(ctx, alice, vip, "hello echo service"); err != nil {
		return fmt.Errorf("alice -> service VIP: %w", err)
	}
	st.say("alice", "-> %s (service echo): %q", vip, reply)
	wire.Stop()
	frames, n := wire.Stats()
	if frames == 0 {
		return errors.New("the underlay capture saw nothing: it cannot vouch for anything")
	}
	if wire.Contains([]byte("hello bob")) || wire.Contains([]byte("bob's app got")) {
		return errors.New("plaintext payload seen on the underlay")
	}
	st.say("wire", "%d frames, %d bytes on the underlay: no request or reply text (mTLS 1.3 records only)", frames, n)

	if _, err := call(ctx, mallory, bobApp, "let me in"); err == nil {
		return errors.New("mallory reached bob despite the policy")
	}
	st.say("mallory", "-> %s: refused (AuthorizationPolicy echo-from-alice)", bobApp)
	if _, err := call(ctx, legacy, bobApp, "plaintext hello"); err == nil {
		return errors.New("plaintext reached bob despite STRICT")
	}
	st.say("legacy", "-> %s (plaintext, outside the mesh): refused (PeerAuthentication STRICT)", bobApp)
	fmt.Fprintln(out)

	// 6. A policy edit: zmeshd sees the file, pushes one resource, and the
	// ztunnels enforce it.
	denyAlice := filepath.Join(meshDir, "40-deny-alice.yaml")
	if err := os.WriteFile(denyAlice, []byte(denyAliceYAML), 0o644); err != nil {
		return err
	}
	start := time.Now()
	if err := waitFor(ctx, func() bool { _, err := call(ctx, alice, bobApp, "still there?"); return err != nil }); err != nil {
		return errors.New("alice still reaches bob after a DENY policy naming her was written")
	}
	st.say("edit", "wrote %s (DENY from alice): alice -> bob refused %s later; DENY beats ALLOW", filepath.Base(denyAlice), time.Since(start).Round(10*time.Millisecond))
	os.Remove(denyAlice)
	start = time.Now()
	if err := waitFor(ctx, func() bool { _, err := call(ctx, alice, bobApp, "back?"); return err == nil }); err != nil {
		return errors.New("alice does not reach bob again after the DENY policy was removed")
	}
	st.say("edit", "removed it: alice -> bob answered again %s later", time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintln(out)

	// 7. What bob's ztunnel saw: access log and metrics.
	zt2 := zts["node-2"]
	if err := waitFor(ctx, func() bool { return zt2.logCount("connection complete") >= 4 }); err != nil {
		return errors.New("node-2's ztunnel did not log the four connections")
	}
	for i, rec := range zt2.logRecords("connection complete") {
		if i == 4 {
			break
		}
		verdict := "allowed"
		if r := rec["reason"]; r != nil {
			verdict = fmt.Sprint(r)
		}
		src := rec["src.identity"]
		if src == nil {
			src = "(no identity: plaintext from " + fmt.Sprint(rec["src.addr"]) + ")"
		}
		st.say("node-2", "inbound %v -> %v: %s", src, rec["dst.addr"], verdict)
	}
	metrics, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", zt2.base+20))
	if err != nil {
		return err
	}
	shown := 0
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "istio_tcp_connections_closed_total{") && !strings.HasSuffix(line, " 0") && shown < 3 {
			st.say("node-2", "%s", shortMetric(line))
			shown++
		}
	}
	if shown == 0 {
		return errors.New("node-2's ztunnel exports no istio_tcp_connections_closed_total")
	}
	dump, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/config_dump", zt2.base))
	if err != nil {
		return err
	}
	if !strings.Contains(dump, bob.id()) {
		return errors.New("node-2's config_dump does not list bob's certificate")
	}
	st.say("node-2", "config_dump: %d bytes (workloads, services, policies, pods, certificates)", len(dump))
	fmt.Fprintln(out)
	st.say("done", "captured plain TCP crossed nodes over mTLS with identities, policy refused the rest, and an edit took effect")
	if !stay {
		return nil
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "The mesh is up. Try (as root, in another terminal):")
	fmt.Fprintf(out, "  # alice calls the echo service through the mesh\n")
	fmt.Fprintf(out, "  ip netns exec %s bash -c 'exec 3<>/dev/tcp/10.96.0.10/80; echo hello >&3; head -1 <&3'\n", alice.netns.Name)
	fmt.Fprintf(out, "  # mallory is refused by policy\n")
	fmt.Fprintf(out, "  ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/8080; echo hello >&3; head -1 <&3'\n", mallory.netns.Name, bob.addr)
	fmt.Fprintf(out, "  # what node-2's ztunnel knows, and whether the ztunnels are in sync with zmeshd\n")
	fmt.Fprintf(out, "  %s ztunnel-config all --ztunnel-admin 127.0.0.1:%d\n", filepath.Join(binDir, "zmeshctl"), ztunnelPortBase+100)
	fmt.Fprintf(out, "  %s proxy-status --zmeshd http://%s\n", filepath.Join(binDir, "zmeshctl"), zmeshdMonitoring)
	fmt.Fprintf(out, "  # edit the mesh: zmeshd applies a saved change within a second\n")
	fmt.Fprintf(out, "  $EDITOR %s    # then: tail -f %s\n", filepath.Join(meshDir, "30-policies.yaml"), filepath.Join(tmp, "zmeshd.log"))
	fmt.Fprintln(out, "Press Ctrl-C to remove everything.")
	<-ctx.Done()
	fmt.Fprintln(out)
	return nil
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
// ambient by its labels (what zmeshd and the agent decide the same way).
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
		out = append(out, &pod{name: p.Name, ns: p.Namespace, sa: sa, node: p.Spec.NodeName, addr: addr, ambient: mode == "ambient"})
	}
	return out
}

// proc is a zmesh process and its JSON log.
type proc struct {
	cmd  *exec.Cmd
	base int
	log  *lockedBuffer
	done chan struct{}
}

// startProc starts bin and waits until GET ready answers with a body
// starting with want.
func startProc(ctx context.Context, bin, logPath, ready, want string, args ...string) (*proc, error) {
	z := &proc{cmd: exec.Command(bin, args...), log: &lockedBuffer{}, done: make(chan struct{})}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	z.cmd.Stderr = io.MultiWriter(z.log, logFile)
	if err := z.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { z.cmd.Wait(); logFile.Close(); close(z.done) }()
	err = waitFor(ctx, func() bool {
		select {
		case <-z.done:
			return true
		default:
		}
		body, err := httpGet(ctx, ready)
		return err == nil && strings.HasPrefix(body, want)
	})
	select {
	case <-z.done:
		return nil, fmt.Errorf("exited: %s", z.log.String())
	default:
	}
	if err != nil {
		z.stop()
		return nil, fmt.Errorf("not ready: %s", z.log.String())
	}
	return z, nil
}

// stop is SIGTERM, then the ztunnel drains and exits.
func (z *proc) stop() {
	z.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-z.done:
	case <-time.After(10 * time.Second):
		z.cmd.Process.Kill()
		<-z.done
	}
}

func (z *proc) logRecords(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(z.log.String()))
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func (z *proc) logCount(msg string) int { return len(z.logRecords(msg)) }

// call connects from a pod (plain TCP: capture takes it), sends msg,
// half-closes and reads the reply.
func call(ctx context.Context, from *pod, dst netip.AddrPort, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := from.netns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(msg))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		err = errors.New("closed without a reply")
	}
	return strings.TrimSpace(string(b)), err
}

// serveApp answers each line a connection sends with what it got and from
// whom, until the caller closes.
func serveApp(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "bob's app got %q from %s\n", sc.Text(), c.RemoteAddr().(*net.TCPAddr).IP)
			}
		}()
	}
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func waitFor(ctx context.Context, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// shortMetric keeps a metric line's telling labels.
func shortMetric(line string) string {
	keep := []string{"reporter", "source_principal", "destination_principal", "connection_security_policy", "response_flags"}
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

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
