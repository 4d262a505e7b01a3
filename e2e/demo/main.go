// Command demo runs what is real of zmesh so far on one machine, with no
// cluster: a CA and its Istio-compatible certificate service, two "nodes"
// whose ztunnel-side certificate managers fetch their pods' identities over
// gRPC, and an HBONE tunnel (HTTP/2 CONNECT over mutual TLS 1.3) between two
// pods in their own network namespaces on a bridge. It prints who proved
// what to whom, shows refusals, and removes everything it made.
//
// It needs root (network namespaces). Run it with `make demo`.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "istio.io/api/security/v1alpha1"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/ztunnel/hbone"
)

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func say(who, format string, args ...any) {
	fmt.Printf("%-9s %s\n", "["+who+"]", fmt.Sprintf(format, args...))
}

type pod struct {
	name, node string
	id         spiffeid.ID
	ns         *netenv.NS
	addr       netip.Addr
}

func run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and needs root (try: sudo make demo)")
	}
	// Library logs would interleave with the story; keep warnings only.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	fmt.Println("zmesh demo: workload identity and HBONE between two pods (no cluster needed)")
	fmt.Println()

	// 1. The certificate authority and its gRPC service, as zmeshd runs them.
	dir, err := os.MkdirTemp("", "zmesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca, err := identity.LoadOrCreateCA(dir, identity.CAOptions{TrustDomain: td})
	if err != nil {
		return err
	}
	root := ca.Bundle().X509Authorities()[0]
	say("ca", "self-signed root %q for trust domain %s, sha256 %x…", root.Subject.CommonName, td, sha256.Sum256(root.Raw))

	alice := identity.MustWorkloadID(td.Name(), "demo", "alice")
	bob := identity.MustWorkloadID(td.Name(), "demo", "bob")
	mallory := identity.MustWorkloadID(td.Name(), "demo", "mallory")
	ztunnelID := identity.MustWorkloadID(td.Name(), "zmesh-system", "ztunnel")
	scheduled := map[string][]spiffeid.ID{"node-1": {alice, mallory}, "node-2": {bob}}

	authn, err := identity.NewStaticTokenAuthenticator(map[string]identity.Caller{
		"token-ztunnel-node-1": {ID: ztunnelID, Node: "node-1"},
		"token-ztunnel-node-2": {ID: ztunnelID, Node: "node-2"},
	})
	if err != nil {
		return err
	}
	authz, err := identity.NewNodeAuthorizer([]spiffeid.ID{ztunnelID}, func(node string, id spiffeid.ID) bool {
		for _, x := range scheduled[node] {
			if x == id {
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	certSrv, err := identity.NewCertServer(ca, authn, authz)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, certSrv)
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go gs.Serve(gln)
	defer gs.Stop()
	say("ca", "istio.v1.auth.IstioCertificateService/CreateCertificate on %s", gln.Addr())

	// 2. The network: an underlay bridge and one namespace per pod.
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.44.0.0/24"))
	if err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	}
	defer func() {
		lan.Close()
		say("cleanup", "network namespaces removed (%d left)", len(netenv.Leftovers()))
	}()
	mk := func(name, node string, id spiffeid.ID) (*pod, error) {
		ns, addr, err := lan.Host(name)
		if err != nil {
			return nil, err
		}
		return &pod{name: name, node: node, id: id, ns: ns, addr: addr}, nil
	}
	podA, err := mk("pod-a", "node-1", alice)
	if err != nil {
		return err
	}
	podM, err := mk("pod-m", "node-1", mallory)
	if err != nil {
		return err
	}
	podB, err := mk("pod-b", "node-2", bob)
	if err != nil {
		return err
	}
	for _, p := range []*pod{podA, podM, podB} {
		say("net", "%s on %s: netns %s, eth0 %s", p.name, p.node, p.ns.Name, p.addr)
	}

	// 3. Each node's ztunnel fetches its pods' certificates with its own token.
	managers := map[string]*identity.Manager{}
	for _, node := range []string{"node-1", "node-2"} {
		cc, err := grpc.NewClient(gln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		tok := "token-ztunnel-" + node
		client, err := identity.NewCertClient(cc, func(context.Context) (string, error) { return tok, nil }, 0)
		if err != nil {
			return err
		}
		m, err := identity.NewManager(client, ca.Bundle(), identity.ManagerOptions{})
		if err != nil {
			return err
		}
		mctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { m.Run(mctx); close(done) }()
		defer func() { cancel(); <-done }()
		managers[node] = m
	}
	for _, p := range []*pod{podA, podM, podB} {
		svid, err := managers[p.node].SVID(ctx, p.id)
		if err != nil {
			return fmt.Errorf("%s: fetch certificate for %s: %w", p.node, p.id, err)
		}
		leaf := svid.Certificates[0]
		say(p.node, "ztunnel got %s for %s (expires in %s)", leaf.URIs[0], p.name, time.Until(leaf.NotAfter).Round(time.Minute))
	}
	// A ztunnel cannot obtain identities of pods on other nodes.
	if _, err := managers["node-2"].SVID(ctx, alice); err != nil {
		say("node-2", "ztunnel asking for %s is refused: %s", alice, shortErr(err))
	} else {
		return errors.New("node-2 obtained alice's certificate")
	}
	managers["node-2"].Forget(alice)

	// 4. pod-b: an app on :8080 and, in front of it, HBONE on :15008 that
	// admits alice only (the L4 authorization ztunnel will enforce).
	app, err := podB.ns.Listen("tcp", netip.AddrPortFrom(podB.addr, 8080).String())
	if err != nil {
		return err
	}
	defer app.Close()
	go serveApp(app)
	srv, err := hbone.NewServer(func(ctx context.Context, r *hbone.Request, s *hbone.Stream) {
		if r.Peer != alice {
			say("pod-b", "HBONE ← %s: 401, not allowed by policy", r.Peer)
			s.RespondError(401, "RBAC: access denied")
			return
		}
		say("pod-b", "HBONE ← %s from %s, CONNECT %s: 200", r.Peer, r.RemoteAddr, r.Target)
		up, err := podB.ns.Dial(ctx, "tcp", r.Target.String())
		if err != nil {
			s.RespondError(503, err.Error())
			return
		}
		defer up.Close()
		s.Respond(200)
		hbone.Join(s, up)
	}, hbone.ServerOptions{})
	if err != nil {
		return err
	}
	hln, err := podB.ns.Listen("tcp", netip.AddrPortFrom(podB.addr, 15008).String())
	if err != nil {
		return err
	}
	serverTLS := identity.ServerTLS(managers["node-2"], bob, nil)
	go func() {
		for {
			c, err := hln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(ctx, tls.Server(c, serverTLS))
		}
	}()
	defer func() {
		hln.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	say("pod-b", "app on %s:8080, HBONE (mTLS 1.3, h2) on %s:15008 as %s", podB.addr, podB.addr, bob)
	fmt.Println()

	// 5. Tunnels from node-1's pods.
	pool, err := hbone.NewPool(hbone.PoolConfig{
		Dial: func(ctx context.Context, k hbone.Key) (net.Conn, error) {
			src := map[string]*pod{podA.name: podA, podM.name: podM}[k.SrcWorkload]
			return src.ns.Dial(ctx, "tcp", k.Dst.String())
		},
		TLS: func(k hbone.Key) (*tls.Config, error) {
			cfg := identity.ClientTLS(managers["node-1"], k.SrcID, []spiffeid.ID{k.DstID})
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				peer, _ := identity.PeerID(cs)
				say("node-1", "TLS %s, ALPN %s, server proved %s", tlsVersion(cs.Version), cs.NegotiatedProtocol, peer)
				return nil
			}
			return cfg, nil
		},
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	tunnel := func(from *pod, expect spiffeid.ID, msg string) (string, error) {
		key := hbone.Key{SrcWorkload: from.name, SrcID: from.id, DstID: expect, Dst: netip.AddrPortFrom(podB.addr, 15008)}
		st, err := pool.Connect(ctx, key, &hbone.ConnectRequest{Target: netip.AddrPortFrom(podB.addr, 8080)})
		if err != nil {
			return "", err
		}
		defer st.Close()
		st.Write([]byte(msg))
		st.CloseWrite()
		b, err := io.ReadAll(st)
		return string(b), err
	}

	// The capture must be able to see plaintext, or its silence proves
	// nothing: first a plain TCP request straight to pod-b's app.
	capture, err := lan.Underlay.Capture("")
	if err != nil {
		return err
	}
	c, err := podA.ns.Dial(ctx, "tcp", netip.AddrPortFrom(podB.addr, 8080).String())
	if err != nil {
		return err
	}
	c.Write([]byte("plain hello, no mesh"))
	c.(*net.TCPConn).CloseWrite()
	io.ReadAll(c)
	c.Close()
	capture.Stop()
	if !capture.Contains([]byte("plain hello, no mesh")) {
		return errors.New("the underlay capture missed a plaintext request: it cannot vouch for anything")
	}
	say("wire", "control: plain TCP from pod-a to pod-b's app is readable on the underlay, as expected")

	capture, err = lan.Underlay.Capture("")
	if err != nil {
		return err
	}
	say("wire", "capturing every frame on the underlay bridge's ports (AF_PACKET)")
	say("pod-a", "as %s: CONNECT %s:8080 via %s:15008, expecting %s", alice, podB.addr, podB.addr, bob)
	reply, err := tunnel(podA, bob, "hello from alice")
	if err != nil {
		return fmt.Errorf("alice's tunnel: %w", err)
	}
	say("pod-a", "reply through the tunnel: %q", reply)
	reply, err = tunnel(podA, bob, "second request, same connection")
	if err != nil {
		return fmt.Errorf("alice's second tunnel: %w", err)
	}
	say("pod-a", "reply: %q (pooled connections to pod-b: %d)", reply, len(pool.Conns()))
	capture.Stop()
	frames, n := capture.Stats()
	if capture.Contains([]byte("hello from alice")) || capture.Contains([]byte("pod-b's app got")) {
		return errors.New("plaintext payload seen on the underlay")
	}
	say("wire", "%d frames, %d bytes on the underlay: neither request nor reply text appears (TLS records only)", frames, n)
	fmt.Println()

	say("pod-m", "as %s: CONNECT %s:8080", mallory, podB.addr)
	if _, err := tunnel(podM, bob, "let me in"); err != nil {
		say("pod-m", "refused: %s", shortErr(err))
	} else {
		return errors.New("mallory got through")
	}
	fmt.Println()

	say("pod-a", "expecting %s at pod-b's address (a spoofed or misrouted peer)", mallory)
	if _, err := tunnel(podA, mallory, "who are you?"); err != nil {
		say("pod-a", "refused: %s", shortErr(err))
	} else {
		return errors.New("client accepted the wrong server identity")
	}
	fmt.Println()
	say("done", "mTLS identities from the CA, HBONE tunnels, and fail-closed checks on both sides all worked")
	return nil
}

// serveApp answers each connection with what it received.
func serveApp(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, _ := io.ReadAll(c)
			fmt.Fprintf(c, "pod-b's app got %q from %s", b, c.RemoteAddr())
		}()
	}
}

func tlsVersion(v uint16) string {
	if v == tls.VersionTLS13 {
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, "desc = "); i >= 0 {
		s = s[i+len("desc = "):]
	}
	return s
}
