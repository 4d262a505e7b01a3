package inpod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/cni/redirect"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/internal/testutil"
)

// capturedPod is a pod on a LAN with capture installed (routing + program)
// and its namespace open as ztunnel holds it.
type capturedPod struct {
	ns   *netenv.NS
	ip   netip.Addr
	n    *Netns
	maps *bpf.PodMaps
}

func newCapturedPod(t testing.TB, lan *netenv.LAN) *capturedPod {
	t.Helper()
	ns, ip, err := lan.Host("pod")
	if err != nil {
		t.Fatal(err)
	}
	if err := redirect.Apply(ns.Handle(), redirect.Config{PodIPs: []netip.Addr{ip}}); err != nil {
		t.Fatal(err)
	}
	c, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l, err := c.Attach(int(ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := c.Enroll(ip); err != nil {
		t.Fatal(err)
	}
	// What ZDS would deliver: the netns and the two maps, as descriptors.
	nsfd, err := unix.FcntlInt(uintptr(ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(nsfd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	lfd, bfd, err := c.MapFDs()
	if err != nil {
		t.Fatal(err)
	}
	maps, err := bpf.NewPodMaps(lfd, bfd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maps.Close() })
	return &capturedPod{ns: ns, ip: ip, n: n, maps: maps}
}

func newLAN(t testing.TB, prefix string) *netenv.LAN {
	t.Helper()
	lan, err := netenv.NewLAN(netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() { lan.Close() })
	return lan
}

// serve runs h for each connection of ln until ln is closed; the test's
// cleanup waits for every handler, so none outlives the maps it uses.
func serve(t testing.TB, ln net.Listener, h func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); h(c) })
		}
	})
}

// serveOnHost adds a host "server" to lan, serves h on its port 7 until
// the test ends, and returns that address.
func serveOnHost(t testing.TB, lan *netenv.LAN, h func(net.Conn)) netip.AddrPort {
	server, ip, err := lan.Host("server")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(ip, 7)
	ln, err := server.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, h)
	return addr
}

// outboundPassThrough is ztunnel's outbound path without HBONE: a 15001
// listener steered by capture, dialing each connection's original
// destination from the pod with a marked socket.
func outboundPassThrough(t testing.TB, p *capturedPod) {
	t.Helper()
	out, err := p.n.Listen(netip.MustParseAddrPort("0.0.0.0:15001"), ListenOptions{Transparent: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := Steer(p.maps, bpf.Outbound, out); err != nil {
		out.Close()
		t.Fatal(err)
	}
	serve(t, out, func(in net.Conn) {
		up, err := p.n.Dial(context.Background(), addrOf(in.LocalAddr()))
		if err != nil {
			return
		}
		defer up.Close()
		go func() { io.Copy(up, in); up.CloseWrite() }()
		io.Copy(in, up)
	})
}

func addrOf(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// The outbound path ztunnel will run: a captured connection arrives on the
// 15001 listener with its original destination, and a marked dial from the
// pod reaches that destination without being captured again.
func TestOutboundThroughInPodSockets(t *testing.T) {
	lan := newLAN(t, "10.88.0.0/24")
	p := newCapturedPod(t, lan)
	dst := serveOnHost(t, lan, func(c net.Conn) { io.Copy(c, c) })

	outboundPassThrough(t, p)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	app, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.Write([]byte("via 15001"))
	app.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(app)
	if err != nil || string(b) != "via 15001" {
		t.Fatalf("echo through the outbound proxy: %q, %v", b, err)
	}
}

// The inbound path: a connection captured to 15006 is delivered to the app
// from the original client's address (transparent dial + bypass entry).
func TestInboundKeepsClientAddress(t *testing.T) {
	lan := newLAN(t, "10.89.0.0/24")
	p := newCapturedPod(t, lan)
	client, clientIP, err := lan.Host("client")
	if err != nil {
		t.Fatal(err)
	}
	appAddr := netip.AddrPortFrom(p.ip, 8080)
	app, err := p.ns.Listen("tcp", appAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	seen := make(chan netip.AddrPort, 1)
	serve(t, app, func(c net.Conn) {
		seen <- addrOf(c.RemoteAddr())
		io.Copy(c, c)
	})

	in, err := p.n.Listen(netip.MustParseAddrPort("0.0.0.0:15006"), ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := Steer(p.maps, bpf.Inbound, in); err != nil {
		t.Fatal(err)
	}
	serve(t, in, func(c net.Conn) {
		up, err := p.n.DialTransparent(context.Background(), addrOf(c.RemoteAddr()).Addr(), addrOf(c.LocalAddr()), p.maps)
		if err != nil {
			t.Errorf("transparent dial: %v", err)
			return
		}
		defer up.Close()
		go func() { io.Copy(up, c); up.CloseWrite() }()
		io.Copy(c, up)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, "tcp", appAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("hi app"))
	conn.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "hi app" {
		t.Fatalf("echo through the inbound proxy: %q, %v", b, err)
	}
	select {
	case src := <-seen:
		if src.Addr() != clientIP {
			t.Fatalf("app saw %s, want the client %s", src, clientIP)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("app never got the connection")
	}
}

func TestDialHonoursContextAndClose(t *testing.T) {
	lan := newLAN(t, "10.90.0.0/24")
	p := newCapturedPod(t, lan)
	// Nobody answers at .200 on the LAN: the connect hangs until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := p.n.Dial(ctx, netip.MustParseAddrPort("10.90.0.200:80")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to a silent address: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("dial gave up after %s", d)
	}
	n2, err := Open(must(unix.FcntlInt(uintptr(p.ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)))
	if err != nil {
		t.Fatal(err)
	}
	n2.Close()
	if err := n2.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v", err)
	}
}

func must(fd int, err error) int {
	if err != nil {
		panic(err)
	}
	return fd
}

// Dials take their sockets from the namespace's stock, refilled by its
// thread: every one of many dials leaves from the pod (its address, its
// routes), none is captured, and Close leaves no descriptor behind.
func TestDialsComeFromThePodsStock(t *testing.T) {
	lan := newLAN(t, "10.92.0.0/24")
	p := newCapturedPod(t, lan)
	seen := make(chan netip.Addr, 64)
	dst := serveOnHost(t, lan, func(c net.Conn) { seen <- addrOf(c.RemoteAddr()).Addr(); io.Copy(c, c) })

	nsfd, err := unix.FcntlInt(uintptr(p.ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(nsfd)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * stockSize {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := n.Dial(ctx, dst)
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		msg := fmt.Sprintf("dial %d", i)
		c.Write([]byte(msg))
		c.CloseWrite()
		b, err := io.ReadAll(c)
		c.Close()
		if string(b) != msg || err != nil {
			t.Fatalf("dial %d echoed %q, %v", i, b, err)
		}
		if src := <-seen; src != p.ip {
			t.Fatalf("dial %d came from %s, want the pod's %s", i, src, p.ip)
		}
	}
	// The stock's sockets, by inode: descriptor numbers get reused. The
	// thread refills the stock after the dial that ran it low, so a loaded
	// machine may see it empty for a moment.
	var stocked []string
	testutil.Eventually(t, 5*time.Second, "an IPv4 socket in stock after the dials", func() error {
		n.stockMu.Lock()
		defer n.stockMu.Unlock()
		stocked = stocked[:0]
		for _, fd := range n.stock[0] {
			if l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
				stocked = append(stocked, l)
			}
		}
		if len(stocked) == 0 {
			return errors.New("stock is empty")
		}
		return nil
	})
	n.Close()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && slices.Contains(stocked, l) {
			t.Errorf("stocked socket %s still open after Close (fd %s)", l, e.Name())
		}
	}
}
