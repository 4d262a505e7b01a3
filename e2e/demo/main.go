// Command demo runs zmesh's L4 mesh on one machine with no cluster: a CA
// and its Istio-compatible certificate service, two "nodes" each with a CNI
// agent (eBPF capture in every ambient pod) and a ztunnel process fed by a
// --local-config file, and pods in their own network namespaces on a
// bridge. Plain TCP from the pods is captured and tunnelled over HBONE;
// the demo shows who reached whom with which identity, what policy refused,
// that nothing readable crossed the wire, and the ztunnels' metrics. It
// removes everything it made.
//
// It needs root (network namespaces, eBPF). Run it with `make demo`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

func main() {
	bin := flag.String("ztunnel", "", "ztunnel binary (default: build ./cmd/ztunnel)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

type pod struct {
	name, ns, sa, node string
	netns              *netenv.NS
	addr               netip.Addr
}

func (p *pod) id() string { return identity.MustWorkloadID(td.Name(), p.ns, p.sa).String() }

type story struct{ w io.Writer }

func (s story) say(who, format string, args ...any) {
	fmt.Fprintf(s.w, "%-10s %s\n", "["+who+"]", fmt.Sprintf(format, args...))
}

func run(ctx context.Context, ztunnelBin string, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and loads eBPF: it needs root (try: sudo make demo)")
	}
	st := story{out}
	// Library logs would interleave with the story; keep errors only.
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	slog.SetDefault(quiet)
	fmt.Fprintln(out, "zmesh demo: an L4 ambient mesh on two nodes (no cluster needed)")
	fmt.Fprintln(out)

	dir, err := os.MkdirTemp("", "zmesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if ztunnelBin == "" {
		ztunnelBin = filepath.Join(dir, "ztunnel")
		st.say("build", "go build ./cmd/ztunnel")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", ztunnelBin, "github.com/zmesh/zmesh/cmd/ztunnel")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build ztunnel: %w", err)
		}
	}

	// 1. The network: an underlay bridge and one namespace per pod.
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.44.0.0/24"))
	if err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	}
	defer func() {
		lan.Close()
		st.say("cleanup", "network namespaces removed (%d left)", len(netenv.Leftovers()))
	}()
	pods := []*pod{
		{name: "alice", ns: "demo", sa: "alice", node: "node-1"},
		{name: "mallory", ns: "demo", sa: "mallory", node: "node-1"},
		{name: "bob", ns: "demo", sa: "bob", node: "node-2"},
		{name: "legacy", ns: "legacy", sa: "default"}, // not in the mesh
	}
	byName := map[string]*pod{}
	for _, p := range pods {
		if p.netns, p.addr, err = lan.Host(p.name); err != nil {
			return err
		}
		byName[p.name] = p
	}
	alice, mallory, bob, legacy := byName["alice"], byName["mallory"], byName["bob"], byName["legacy"]

	// 2. The CA and its gRPC certificate service, as zmeshd runs them. Each
	// node's ztunnel may only obtain identities of pods on its node.
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{TrustDomain: td})
	if err != nil {
		return err
	}
	rootCert := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(rootCert, ca.RootsPEM(), 0o644); err != nil {
		return err
	}
	caAddr, stopCA, err := serveCA(ca, pods)
	if err != nil {
		return err
	}
	defer stopCA()
	st.say("ca", "root for %s; IstioCertificateService on %s", td, caAddr)

	// 3. The mesh config every ztunnel reads (what zmeshd would push).
	cfgPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(cfgPath, []byte(meshConfig(pods)), 0o644); err != nil {
		return err
	}
	st.say("config", "%s: 3 ambient pods, 1 plain pod, service echo 10.96.0.10:80 -> bob:8080;", filepath.Base(cfgPath))
	st.say("config", "policy: only spiffe://…/sa/alice may reach bob; bob is STRICT (no plaintext)")

	// 4. Per node: the CNI agent (eBPF capture + ZDS) and a ztunnel process.
	members := agent.MembershipFunc(func(ns, name string) (string, bool) {
		p := byName[name]
		if p == nil || p.node == "" || p.ns != ns {
			return "", false
		}
		return p.sa, true
	})
	zts := map[string]*ztunnelProc{}
	nodes := map[string]*noderunner.Node{}
	for i, name := range []string{"node-1", "node-2"} {
		ndir := filepath.Join(dir, name)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return err
		}
		n, err := noderunner.Start(name, ndir, members, lan.Underlay.Handle(), quiet)
		if err != nil {
			return err
		}
		defer n.Close()
		nodes[name] = n
		tokFile := filepath.Join(ndir, "token")
		if err := os.WriteFile(tokFile, []byte("token-ztunnel-"+name), 0o600); err != nil {
			return err
		}
		base := 25000 + 100*i
		zt, err := startZtunnel(ctx, ztunnelBin, ndir, base, "--node", name, "--zds-socket", n.ZDSPath,
			"--local-config", cfgPath, "--ca-address", caAddr, "--plaintext-control-plane",
			"--root-cert", rootCert, "--token-file", tokFile, "--drain-grace", "2s")
		if err != nil {
			return err
		}
		defer zt.stop()
		zts[name] = zt
		st.say(name, "ztunnel pid %d ready (admin 127.0.0.1:%d, metrics :%d)", zt.cmd.Process.Pid, base, base+20)
	}
	for _, p := range pods {
		if p.node == "" {
			st.say("net", "%-7s %s  not in the mesh", p.name, p.addr)
			continue
		}
		np := noderunner.Pod{UID: "uid-" + p.name, Name: p.name, Namespace: p.ns, NetnsPath: "/run/netns/" + p.netns.Name, IPs: []string{p.addr.String()}}
		if _, err := nodes[p.node].Add(ctx, np); err != nil {
			return fmt.Errorf("enrol %s: %w", p.name, err)
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
	st.say("mallory", "-> %s: refused", bobApp)
	if _, err := call(ctx, legacy, bobApp, "plaintext hello"); err == nil {
		return errors.New("plaintext reached bob despite STRICT")
	}
	st.say("legacy", "-> %s (plaintext, outside the mesh): refused", bobApp)
	fmt.Fprintln(out)

	// 6. What bob's ztunnel saw: access log and metrics.
	zt2 := zts["node-2"]
	if err := waitFor(ctx, func() bool { return zt2.logCount("connection complete") >= 4 }); err != nil {
		return errors.New("node-2's ztunnel did not log the four connections")
	}
	for _, rec := range zt2.logRecords("connection complete") {
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
	st.say("done", "captured plain TCP crossed nodes over mTLS with identities, and policy refused the rest")
	return nil
}

// serveCA starts the certificate service with one token per node's
// ztunnel; it grants only identities of pods on the caller's node.
func serveCA(ca *identity.CA, pods []*pod) (string, func(), error) {
	ztunnelID := identity.MustWorkloadID(td.Name(), "zmesh-system", "ztunnel")
	authn, err := identity.NewStaticTokenAuthenticator(map[string]identity.Caller{
		"token-ztunnel-node-1": {ID: ztunnelID, Node: "node-1"},
		"token-ztunnel-node-2": {ID: ztunnelID, Node: "node-2"},
	})
	if err != nil {
		return "", nil, err
	}
	authz, err := identity.NewNodeAuthorizer([]spiffeid.ID{ztunnelID}, func(node string, id spiffeid.ID) bool {
		for _, p := range pods {
			if p.node == node && p.id() == id.String() {
				return true
			}
		}
		return false
	})
	if err != nil {
		return "", nil, err
	}
	srv, err := identity.NewCertServer(ca, authn, authz)
	if err != nil {
		return "", nil, err
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	go gs.Serve(ln)
	return ln.Addr().String(), gs.Stop, nil
}

// meshConfig is the --local-config both ztunnels read.
func meshConfig(pods []*pod) string {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for _, p := range pods {
		proto := "NONE"
		if p.node != "" {
			proto = "HBONE"
		}
		fmt.Fprintf(&b, "- uid: Kubernetes//Pod/%s/%s\n  name: %s\n  namespace: %s\n  serviceAccount: %s\n  addresses: [%s]\n  tunnelProtocol: %s\n  node: %q\n  workloadName: %s\n  canonicalName: %s\n  canonicalRevision: v1\n",
			p.ns, p.name, p.name, p.ns, p.sa, p.addr, proto, p.node, p.name, p.name)
		if p.name == "bob" {
			b.WriteString("  services: {demo/echo.demo.svc.cluster.local: {}}\n  authorizationPolicies: [demo/bob-strict]\n")
		}
	}
	b.WriteString(`services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  addresses: [10.96.0.10]
  ports: [{servicePort: 80, targetPort: 8080}]
policies:
- name: only-alice
  namespace: demo
  scope: NAMESPACE
  action: ALLOW
  rules: [{clauses: [{matches: [{principals: [{exact: cluster.local/ns/demo/sa/alice}]}]}]}]
- name: bob-strict
  namespace: demo
  scope: WORKLOAD_SELECTOR
  action: DENY
  rules: [{clauses: [{matches: [{notPrincipals: [{presence: {}}]}]}]}]
`)
	return b.String()
}

// ztunnelProc is a ztunnel process and its JSON log.
type ztunnelProc struct {
	cmd  *exec.Cmd
	base int
	log  *lockedBuffer
	done chan struct{}
}

func startZtunnel(ctx context.Context, bin, dir string, base int, args ...string) (*ztunnelProc, error) {
	args = append(args,
		"--admin-address", fmt.Sprintf("127.0.0.1:%d", base),
		"--metrics-address", fmt.Sprintf("127.0.0.1:%d", base+20),
		"--readiness-address", fmt.Sprintf("127.0.0.1:%d", base+21))
	z := &ztunnelProc{cmd: exec.Command(bin, args...), base: base, log: &lockedBuffer{}, done: make(chan struct{})}
	logFile, err := os.Create(filepath.Join(dir, "ztunnel.log"))
	if err != nil {
		return nil, err
	}
	z.cmd.Stderr = io.MultiWriter(z.log, logFile)
	if err := z.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { z.cmd.Wait(); logFile.Close(); close(z.done) }()
	ready := fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", base+21)
	err = waitFor(ctx, func() bool {
		select {
		case <-z.done:
			return true
		default:
		}
		body, err := httpGet(ctx, ready)
		return err == nil && strings.HasPrefix(body, "ready")
	})
	select {
	case <-z.done:
		return nil, fmt.Errorf("ztunnel exited: %s", z.log.String())
	default:
	}
	if err != nil {
		z.stop()
		return nil, fmt.Errorf("ztunnel not ready: %s", z.log.String())
	}
	return z, nil
}

// stop is SIGTERM, then the ztunnel drains and exits.
func (z *ztunnelProc) stop() {
	z.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-z.done:
	case <-time.After(10 * time.Second):
		z.cmd.Process.Kill()
		<-z.done
	}
}

func (z *ztunnelProc) logRecords(msg string) []map[string]any {
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

func (z *ztunnelProc) logCount(msg string) int { return len(z.logRecords(msg)) }

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
	return string(b), err
}

// serveApp answers each connection with what it received and from whom.
func serveApp(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, _ := io.ReadAll(c)
			fmt.Fprintf(c, "bob's app got %q from %s", b, c.RemoteAddr().(*net.TCPAddr).IP)
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
