package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/proxy"
)

// grace is the harness's proxy.Config.Grace (newNode).
const grace = 2 * time.Second

// A ztunnel restart hands every pod over without losing a connection
// (docs/decisions.md, "ztunnel restart handover"): the new ztunnel opens its listeners beside the
// old ones and takes the SOCKMAP slots; the old one is drained. New
// connections keep succeeding throughout and land on the new ztunnel; a
// connection the old one carries lives on until its grace period ends.
func TestRestartHandover(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restart func(a, b *node) *node
		port    func(client, server *pod) (*pod, uint16) // a listener the old ztunnel gives up
	}{
		{"server node", func(a, b *node) *node { return b }, func(_, s *pod) (*pod, uint16) { return s, proxy.InboundPort }},
		{"client node", func(a, b *node) *node { return a }, func(c, _ *pod) (*pod, uint16) { return c, proxy.OutboundPort }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			a, b := m.newNode("node-a"), m.newNode("node-b")
			client := m.newPod(a, "demo", "client", "sleep")
			server := m.newPod(b, "demo", "server", "echo")
			app := server.serve(t, 8080)
			echo := server.echo(t, 9090)
			n := tc.restart(a, b)
			lp, lport := tc.port(client, server)

			long := startPinger(client.dial(t, echo)).established(t)
			t.Cleanup(long.stop)
			calls := startCalls(client, app.addr)
			t.Cleanup(calls.stop)
			calls.waitOK(t, 10)

			old := n.ztunnel
			z := n.startZtunnel()
			if got := lp.listeners(t, lport); got != 2 {
				t.Fatalf("%d listeners on %d with two ztunnels, want 2 (SO_REUSEPORT)", got, lport)
			}
			calls.waitOK(t, 10)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			drainStart := time.Now()
			drained := make(chan struct{})
			go func() { old.proxy.Drain(ctx); close(drained) }()

			// Once the old ztunnel has let go of its listeners and the new
			// one has served a connection since (for the server's node: the
			// client's pool has followed GOAWAY to a new tunnel), every new
			// connection is the new ztunnel's.
			waitFor(t, func() bool { return lp.listeners(t, lport) == 1 }, "the old ztunnel to close its listeners")
			n0 := z.opened(t)
			waitFor(t, func() bool { return z.opened(t) > n0 }, "a connection served by the new ztunnel")
			o1, n1 := old.opened(t), z.opened(t)
			calls.waitOK(t, 20)
			if o2 := old.opened(t); o2 != o1 {
				t.Errorf("the draining ztunnel opened %v new connections", o2-o1)
			}
			// The call in flight when n1 was read may have been counted in it.
			if n2 := z.opened(t); n2 < n1+19 {
				t.Errorf("the new ztunnel opened %v connections during 20 calls, want at least 19", n2-n1)
			}

			// The long-lived connection is the old ztunnel's: it works on
			// through the grace period and is cut when it ends.
			long.cutAfter(t, drainStart, grace, "the old ztunnel's long-lived connection", "the drain began")
			if long.pings.Load() < 10 {
				t.Errorf("only %d pings on the long-lived connection", long.pings.Load())
			}
			select {
			case <-drained:
			case <-time.After(5 * time.Second):
				t.Fatal("Drain did not return after the grace period")
			}
			old.stop() // the old process exits
			calls.waitOK(t, 10)

			calls.stop()
			if f := calls.failed.Load(); f > 0 {
				t.Fatalf("%d of %d new connections failed during the handover, first: %v", f, f+calls.ok.Load(), calls.firstErr())
			}
		})
	}
}

// Deleting a pod closes its listeners at once and drains its connections:
// one that ends within the grace period ends normally, one that does not
// is cut when it ends, and a new connection is no longer ztunnel's.
//
// The live connections go through SOCKS5: the agent removes the pod's
// capture routing right after ztunnel's ack, which breaks captured
// connections on the spot whatever ztunnel does (their packets stop being
// delivered locally); a loopback connection to 15080 is untouched by that.
func TestDelPodDrains(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	echo := server.echo(t, 9090)

	finishing := socksDial(t, client, echo)
	if err := exchange(finishing, "before"); err != nil {
		t.Fatal(err)
	}
	lingering := startPinger(socksDial(t, client, echo)).established(t)
	t.Cleanup(lingering.stop)
	before := a.opened(t)

	delAt := time.Now()
	if err := a.agent.Del(context.Background(), &cniapi.Pod{UID: client.uid, Name: client.name, Namespace: client.namespace, Netns: "/run/netns/" + client.ns.Name}); err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{proxy.OutboundPort, proxy.InboundPlainPort, proxy.InboundPort, proxy.SOCKS5Port} {
		waitFor(t, func() bool { return client.listeners(t, port) == 0 }, fmt.Sprintf("listener %d closed", port))
	}

	// Within the grace period the connection still carries data and ends
	// as its client ends it.
	if err := exchange(finishing, "during the drain"); err != nil {
		t.Fatalf("a live connection failed right after Del: %v", err)
	}
	finishing.(*net.TCPConn).CloseWrite()
	finishing.SetReadDeadline(time.Now().Add(2 * time.Second))
	if rest, err := io.ReadAll(finishing); err != nil || len(rest) != 0 {
		t.Fatalf("the connection did not end cleanly: %q %v", rest, err)
	}

	// A new connection goes straight to the server (plaintext, accepted
	// by the server's ztunnel as PERMISSIVE), never through node A's.
	if got, err := client.call(app.addr, "after"); err != nil || got != client.ip.String()+"|after" {
		t.Fatalf("a connection after Del: %q %v", got, err)
	}
	if _, err := socksDialErr(client, echo); err == nil {
		t.Error("SOCKS5 still accepted a connection after Del")
	}

	lingering.cutAfter(t, delAt, grace, "a deleted pod's lingering connection", "Del")
	if got := a.opened(t); got != before {
		t.Errorf("node A's ztunnel opened %v connections after Del", got-before)
	}
}

// A removed pod's certificate is forgotten once its drain ends, unless
// another pod of the node runs as the same identity.
func TestDelPodForgetsCertificate(t *testing.T) {
	m := newMesh(t)
	a := m.newNode("node-a", func(c *proxy.Config) { c.Grace = 100 * time.Millisecond })
	one := m.newPod(a, "demo", "one", "shared")
	two := m.newPod(a, "demo", "two", "shared")
	solo := m.newPod(a, "demo", "solo", "alone")
	shared := identity.MustWorkloadID("cluster.local", "demo", "shared")
	alone := identity.MustWorkloadID("cluster.local", "demo", "alone")
	held := func() map[spiffeid.ID]bool {
		out := map[spiffeid.ID]bool{}
		for _, c := range a.certs.Certificates() {
			out[c.ID] = true
		}
		return out
	}
	if h := held(); !h[shared] || !h[alone] {
		t.Fatalf("certificates before Del: %v", h)
	}
	del := func(p *pod) {
		t.Helper()
		if err := a.agent.Del(context.Background(), &cniapi.Pod{UID: p.uid, Name: p.name, Namespace: p.namespace, Netns: "/run/netns/" + p.ns.Name}); err != nil {
			t.Fatal(err)
		}
	}
	del(solo)
	waitFor(t, func() bool { return !held()[alone] }, "the removed pod's certificate to be forgotten")
	del(one)
	waitFor(t, func() bool {
		for _, pi := range a.proxy.Pods() {
			if pi.UID == one.uid {
				return false
			}
		}
		return true
	}, "pod one to be removed")
	time.Sleep(500 * time.Millisecond) // well past its drain
	if !held()[shared] {
		t.Fatal("the certificate of an identity another pod still runs as was forgotten")
	}
	del(two)
	waitFor(t, func() bool { return !held()[shared] }, "the last pod's certificate to be forgotten")
}

// SIGTERM: Drain sends GOAWAY to HBONE clients, whose pools stop opening
// streams on those connections while their live streams go on, and closes
// the listeners so nothing new is accepted. Live connections run until
// the grace period ends.
func TestDrainGoesAway(t *testing.T) {
	const grace = 4 * time.Second // room for the checks made during it
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b", func(c *proxy.Config) { c.Grace = grace })
	client := m.newPod(a, "demo", "client", "sleep")
	server := m.newPod(b, "demo", "server", "echo")
	app := server.serve(t, 8080)
	echo := server.echo(t, 9090)

	// Node A's ztunnel carries one connection over its pooled tunnel; a
	// pool of the test's own holds another tunnel from the client pod.
	long := startPinger(client.dial(t, echo)).established(t)
	t.Cleanup(long.stop)
	pool, key := testPool(t, m, client, server)
	st, err := pool.Connect(context.Background(), key, &hbone.ConnectRequest{Target: echo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := exchange(st, "tunnel"); err != nil {
		t.Fatal(err)
	}
	if pool.Conns()[key] != 1 {
		t.Fatalf("pool: %v", pool.Conns())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drainStart := time.Now()
	drained := make(chan struct{})
	go func() { b.proxy.Drain(ctx); close(drained) }()

	waitFor(t, func() bool { return pool.Conns()[key] == 0 }, "the pool to drop the connection on GOAWAY")
	if err := exchange(st, "after goaway"); err != nil {
		t.Fatalf("a stream open at GOAWAY failed: %v", err)
	}
	for _, port := range []uint16{proxy.OutboundPort, proxy.InboundPlainPort, proxy.InboundPort} {
		waitFor(t, func() bool { return server.listeners(t, port) == 0 }, fmt.Sprintf("listener %d closed", port))
	}
	// Not accepted: nothing listens on the server pod's 15008 any more, and
	// the pod's reset reaches the peer (cni/redirect routes it out).
	if got, err := callTimeout(client, app.addr, "new", 500*time.Millisecond); err == nil {
		t.Fatalf("a draining ztunnel accepted a new connection: %q", got)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ccancel()
	if _, err := pool.Connect(cctx, key, &hbone.ConnectRequest{Target: echo}); err == nil {
		t.Fatal("a draining ztunnel accepted a new tunnel")
	}

	// Node A's pool left its tunnel too: with a ztunnel for node B up again,
	// a new connection succeeds while the old tunnel still carries the
	// long-lived one (a stream opened on it would be refused).
	z := b.startZtunnel()
	if got, err := client.call(app.addr, "new"); err != nil || got != client.ip.String()+"|new" {
		t.Fatalf("a new connection with a new ztunnel: %q %v", got, err)
	}
	select {
	case <-long.failed:
		t.Fatalf("the long-lived connection failed %v into the drain: %v", long.failedAt.Sub(drainStart), long.err)
	default:
	}
	if z.opened(t) == 0 {
		t.Error("the new ztunnel did not count the new connection")
	}

	long.cutAfter(t, drainStart, grace, "the long-lived connection", "the drain began")
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the grace period")
	}
	if err := exchange(st, "after grace"); err == nil {
		t.Error("a tunnel stream outlived the grace period")
	}
}

// pinger exchanges a small message on a connection every 20 ms until the
// first failure, whose time and error it keeps.
type pinger struct {
	c        net.Conn
	pings    atomic.Int64
	failed   chan struct{} // closed at the first failure
	failedAt time.Time
	err      error
	quit     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func startPinger(c net.Conn) *pinger {
	p := &pinger{c: c, failed: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-tick.C:
			}
			if err := exchange(c, "ping"); err != nil {
				p.failedAt, p.err = time.Now(), err
				close(p.failed)
				return
			}
			p.pings.Add(1)
		}
	}()
	return p
}

// established returns p once its first exchange went through: only then is
// the connection long-lived rather than still opening.
func (p *pinger) established(t testing.TB) *pinger {
	t.Helper()
	waitFor(t, func() bool { return p.pings.Load() > 0 }, "the long-lived connection's first exchange")
	return p
}

// cutAfter waits for p's connection (what) to fail, for the grace period
// and 5 s more, and fails the test unless it failed once the grace period
// from start (since) had passed.
func (p *pinger) cutAfter(t *testing.T, start time.Time, grace time.Duration, what, since string) {
	t.Helper()
	select {
	case <-p.failed:
	case <-time.After(grace + 5*time.Second):
		t.Fatalf("%s outlived the %v grace period", what, grace)
	}
	if d := p.failedAt.Sub(start); d < grace {
		t.Errorf("%s was cut %v after %s, before the %v grace period ended: %v", what, d, since, grace, p.err)
	}
}

func (p *pinger) stop() {
	p.once.Do(func() { close(p.quit); p.c.Close(); <-p.done })
}

// callTimeout is pod.call giving up after d.
func callTimeout(p *pod, dst netip.AddrPort, msg string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		err = io.ErrUnexpectedEOF
	}
	return string(b), err
}

// exchange writes msg to an echoing peer and reads it back.
func exchange(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// calls opens new connections from a pod to an app one after another,
// counting successes and failures.
type calls struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	first      error
	quit, done chan struct{}
	once       sync.Once
}

func startCalls(from *pod, dst netip.AddrPort) *calls {
	c := &calls{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for i := 0; ; i++ {
			select {
			case <-c.quit:
				return
			default:
			}
			msg := fmt.Sprintf("call-%d", i)
			got, err := from.call(dst, msg)
			if err == nil && got != from.ip.String()+"|"+msg {
				err = fmt.Errorf("reply %q", got)
			}
			if err != nil {
				c.failed.Add(1)
				c.mu.Lock()
				if c.first == nil {
					c.first = fmt.Errorf("%s at %s: %w", msg, time.Now().Format("15:04:05.000"), err)
				}
				c.mu.Unlock()
				continue
			}
			c.ok.Add(1)
		}
	}()
	return c
}

// waitOK waits for n more successful calls.
func (c *calls) waitOK(t testing.TB, n int64) {
	t.Helper()
	want := c.ok.Load() + n
	waitFor(t, func() bool { return c.ok.Load() >= want }, fmt.Sprintf("%d more successful calls (failed so far: %d, %v)", n, c.failed.Load(), c.firstErr()))
}

func (c *calls) firstErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first
}

func (c *calls) stop() { c.once.Do(func() { close(c.quit); <-c.done }) }

// socksDial opens a connection from the pod through its SOCKS5 listener.
func socksDial(t testing.TB, p *pod, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := socksDialErr(p, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func socksDialErr(p *pod, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", "127.0.0.1:15080")
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ip := dst.Addr().As4()
	req := []byte{5, 1, 0, 5, 1, 0, 1, ip[0], ip[1], ip[2], ip[3], byte(dst.Port() >> 8), byte(dst.Port())}
	reply := make([]byte, 2+10)
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, reply); err != nil {
		c.Close()
		return nil, fmt.Errorf("socks reply: %w", err)
	}
	if reply[0] != 5 || reply[1] != 0 || reply[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks refused: % x", reply)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// testPool is an HBONE client pool of the test's own, dialling from src's
// namespace with src's identity to dst's 15008, as a ztunnel's would.
func testPool(t testing.TB, m *mesh, src, dst *pod) (*hbone.Pool, hbone.Key) {
	t.Helper()
	srcID := identity.MustWorkloadID("cluster.local", src.namespace, src.sa)
	dstID := identity.MustWorkloadID("cluster.local", dst.namespace, dst.sa)
	svid, err := m.ca.Issue(srcID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := identity.NewStaticSource(m.ca.Bundle())
	certs.Put(svid)
	pool, err := hbone.NewPool(hbone.PoolConfig{
		Dial: func(ctx context.Context, k hbone.Key) (net.Conn, error) {
			var c net.Conn
			err := src.ns.Do(func() error {
				// Marked like ztunnel's sockets: unmarked TCP from a captured
				// pod is captured again.
				d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, inpod.ProxyMark) })
					return serr
				}}
				var err error
				c, err = d.DialContext(ctx, "tcp", k.Dst.String())
				return err
			})
			return c, err
		},
		TLS: func(k hbone.Key) (*tls.Config, error) {
			return identity.ClientTLS(certs, k.SrcID, []spiffeid.ID{k.DstID}), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, hbone.Key{SrcWorkload: src.uid, SrcID: srcID, DstID: dstID, Dst: netip.AddrPortFrom(dst.ip, proxy.InboundPort)}
}
