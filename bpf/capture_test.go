package bpf

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/cni/redirect"
	"github.com/zmesh/zmesh/e2e/netenv"
)

const proxyMark = redirect.ProxyMark

// routeLocally installs the pod-side routing of docs/capture.md (the CNI
// side's part): TCP delivered locally through table 100, the proxy's
// marked sockets routed normally.
func routeLocally(t *testing.T, pod *netenv.NS, podIPs ...netip.Addr) {
	t.Helper()
	if err := redirect.Apply(pod.Handle(), redirect.Config{PodIPs: podIPs}); err != nil {
		t.Fatal(err)
	}
}

// proxyListen opens a listener in the pod as ztunnel does: marked,
// optionally transparent, never MPTCP (SOCKMAP rejects MPTCP sockets).
func proxyListen(t *testing.T, pod *netenv.NS, addr string, transparent bool) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := pod.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, proxyMark)
				if serr == nil && transparent {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
			})
			return serr
		}}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func fdOf(t *testing.T, ln *net.TCPListener, use func(fd uintptr) error) {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) { uerr = use(fd) }); err != nil {
		t.Fatal(err)
	}
	if uerr != nil {
		t.Fatal(uerr)
	}
}

// acceptOne returns the local (original destination) and remote address of
// the next connection, or an error after a short wait.
func acceptOne(ln *net.TCPListener) (local, remote netip.AddrPort, err error) {
	ln.SetDeadline(time.Now().Add(2 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		return local, remote, err
	}
	defer c.Close()
	// Wildcard listeners are dual-stack: IPv4 peers appear v4-mapped.
	l, r := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(l.Addr().Unmap(), l.Port()), netip.AddrPortFrom(r.Addr().Unmap(), r.Port()), nil
}

func dial(ns *netenv.NS, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return ns.Dial(ctx, "tcp", addr)
}

// newLAN builds an underlay for the test, removed when it ends.
func newLAN(t *testing.T, prefix string) *netenv.LAN {
	t.Helper()
	lan, err := netenv.NewLAN(netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() {
		if err := lan.Close(); err != nil {
			t.Error(err)
		}
	})
	return lan
}

func host(t *testing.T, lan *netenv.LAN, name string) (*netenv.NS, netip.Addr) {
	t.Helper()
	ns, ip, err := lan.Host(name)
	if err != nil {
		t.Fatal(err)
	}
	return ns, ip
}

// capturePod loads the program, attaches it to pod and enrolls ips; all is
// released when the test ends.
func capturePod(t *testing.T, pod *netenv.NS, ips ...netip.Addr) *Capture {
	t.Helper()
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l, err := c.Attach(int(pod.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := c.Enroll(ips...); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCaptureInPodNamespace(t *testing.T) {
	lan := newLAN(t, "10.78.0.0/24")
	pod, podIP := host(t, lan, "pod")
	peer, peerIP := host(t, lan, "peer")
	prober, proberIP := host(t, lan, "prober")
	routeLocally(t, pod, podIP)
	c := capturePod(t, pod, podIP)
	if err := c.AddProbeSource(proberIP); err != nil {
		t.Fatal(err)
	}

	outbound := proxyListen(t, pod, "0.0.0.0:15001", true)
	inbound := proxyListen(t, pod, "0.0.0.0:15006", false)
	hbone := proxyListen(t, pod, "0.0.0.0:15008", false)
	app := proxyListen(t, pod, "0.0.0.0:8080", false)
	fdOf(t, outbound, func(fd uintptr) error { return c.SetListener(Outbound, fd) })
	fdOf(t, inbound, func(fd uintptr) error { return c.SetListener(Inbound, fd) })

	podApp := netip.AddrPortFrom(podIP, 8080)

	t.Run("outbound goes to 15001 with the original destination", func(t *testing.T) {
		conn, err := dial(pod, "10.99.1.1:80")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		local, remote, err := acceptOne(outbound)
		if err != nil {
			t.Fatal(err)
		}
		if local.String() != "10.99.1.1:80" || remote.Addr() != podIP {
			t.Fatalf("15001 accepted %s -> %s, want %s -> 10.99.1.1:80", remote, local, podIP)
		}
	})
	t.Run("inbound goes to 15006 with the original destination", func(t *testing.T) {
		conn, err := dial(peer, podApp.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		local, remote, err := acceptOne(inbound)
		if err != nil {
			t.Fatal(err)
		}
		if local != podApp || remote.Addr() != peerIP {
			t.Fatalf("15006 accepted %s -> %s, want %s -> %s", remote, local, peerIP, podApp)
		}
	})
	t.Run("HBONE port is not redirected", func(t *testing.T) {
		conn, err := dial(peer, netip.AddrPortFrom(podIP, 15008).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, _, err := acceptOne(hbone); err != nil {
			t.Fatalf("15008 did not get its own connection: %v", err)
		}
	})
	t.Run("probe source reaches the app directly", func(t *testing.T) {
		conn, err := dial(prober, podApp.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, remote, err := acceptOne(app); err != nil || remote.Addr() != proberIP {
			t.Fatalf("app accepted from %s, %v; want %s", remote, err, proberIP)
		}
	})
	t.Run("pod to itself and loopback are untouched", func(t *testing.T) {
		for _, target := range []string{podApp.String(), "127.0.0.1:8080"} {
			conn, err := dial(pod, target)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := acceptOne(app); err != nil {
				t.Fatalf("%s: app did not get the connection: %v", target, err)
			}
			conn.Close()
		}
	})
	t.Run("missing listener fails closed", func(t *testing.T) {
		before, err := c.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.ClearListener(Outbound); err != nil {
			t.Fatal(err)
		}
		defer fdOf(t, outbound, func(fd uintptr) error { return c.SetListener(Outbound, fd) })
		if conn, err := dial(pod, "10.99.1.1:80"); err == nil {
			conn.Close()
			t.Fatal("outbound connection succeeded with no proxy listener")
		}
		after, err := c.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if after.Drop <= before.Drop {
			t.Fatalf("drop counter %d -> %d, want an increase", before.Drop, after.Drop)
		}
	})
	t.Run("released pod takes the kernel's path", func(t *testing.T) {
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
		defer c.Enroll(podIP)
		conn, err := dial(peer, podApp.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, remote, err := acceptOne(app); err != nil || remote.Addr() != peerIP {
			t.Fatalf("app accepted from %s, %v", remote, err)
		}
	})

	cnt, err := c.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cnt.Outbound == 0 || cnt.Inbound == 0 || cnt.Pass == 0 {
		t.Errorf("counters %+v: every verdict above should have been counted", cnt)
	}
}

// ztunnel's dial to the app keeps the client's address (a transparent
// socket bound to it); the bypass entry for its 4-tuple keeps the program
// from capturing that dial as new inbound traffic.
func TestBypassLetsTransparentDialThrough(t *testing.T) {
	lan := newLAN(t, "10.79.0.0/24")
	pod, podIP := host(t, lan, "pod")
	routeLocally(t, pod, podIP)
	c := capturePod(t, pod, podIP)
	inbound := proxyListen(t, pod, "0.0.0.0:15006", false)
	app := proxyListen(t, pod, "0.0.0.0:8080", false)
	fdOf(t, inbound, func(fd uintptr) error { return c.SetListener(Inbound, fd) })

	client := netip.MustParseAddrPort("10.55.0.9:41000") // a remote client's address
	dst := netip.AddrPortFrom(podIP, 8080)
	transparentDial := func(bypass bool) error {
		return pod.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, proxyMark)
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: client.Addr().As4(), Port: int(client.Port())}); err != nil {
				return err
			}
			if bypass {
				if err := c.AddBypass(dst, client); err != nil {
					return err
				}
				defer c.DeleteBypass(dst, client)
			}
			tv := unix.Timeval{Sec: 1}
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
			return unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		})
	}

	if err := transparentDial(true); err != nil {
		t.Fatalf("transparent dial with bypass: %v", err)
	}
	_, remote, err := acceptOne(app)
	if err != nil || remote != client {
		t.Fatalf("app saw %s, %v; want the original client %s", remote, err, client)
	}

	// Without the entry the same dial is captured like any inbound SYN.
	client = netip.MustParseAddrPort("10.55.0.9:41001")
	if err := transparentDial(false); err != nil {
		t.Fatalf("transparent dial without bypass: %v", err)
	}
	if _, remote, err := acceptOne(inbound); err != nil || remote != client {
		t.Fatalf("15006 saw %s, %v; want %s", remote, err, client)
	}
}

// Capture set up by one process survives it: the link and maps are pinned
// in bpffs, reopened by path, and removed by Unpin.
func TestPinSurvivesHandles(t *testing.T) {
	root := t.TempDir()
	if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	ns, err := netenv.NewNS("pin")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Attach(int(ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	dir := root + "/pod-uid"
	if err := c.Pin(l, dir); err != nil {
		t.Fatal(err)
	}
	l.Close()
	c.Close()

	m, err := OpenPinned(dir)
	if err != nil {
		t.Fatalf("reopen pinned maps: %v", err)
	}
	m.Close()
	if err := Unpin(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pin dir still there: %v", err)
	}
}

// The same capture for IPv6: a dual-stack pod, connections over v6.
func TestCaptureIPv6(t *testing.T) {
	lan := newLAN(t, "10.80.0.0/24")
	pod, podIP4 := host(t, lan, "pod")
	peer, _ := host(t, lan, "peer")
	podIP := netip.MustParseAddr("fd00:80::2")
	peerIP := netip.MustParseAddr("fd00:80::3")
	for ns, a := range map[*netenv.NS]netip.Addr{pod: podIP, peer: peerIP} {
		if err := netenv.AddAddr(ns, "eth0", netip.PrefixFrom(a, 64)); err != nil {
			t.Fatal(err)
		}
	}
	routeLocally(t, pod, podIP4, podIP)
	c := capturePod(t, pod, podIP4, podIP)
	outbound := proxyListen(t, pod, "[::]:15001", true)
	inbound := proxyListen(t, pod, "[::]:15006", false)
	fdOf(t, outbound, func(fd uintptr) error { return c.SetListener(Outbound, fd) })
	fdOf(t, inbound, func(fd uintptr) error { return c.SetListener(Inbound, fd) })

	conn, err := dial(pod, "[fd00:99::1]:443")
	if err != nil {
		t.Fatalf("outbound v6: %v", err)
	}
	conn.Close()
	if local, remote, err := acceptOne(outbound); err != nil || local.String() != "[fd00:99::1]:443" || remote.Addr() != podIP {
		t.Fatalf("15001 accepted %s -> %s, %v", remote, local, err)
	}
	conn, err = dial(peer, netip.AddrPortFrom(podIP, 8080).String())
	if err != nil {
		t.Fatalf("inbound v6: %v", err)
	}
	conn.Close()
	if local, remote, err := acceptOne(inbound); err != nil || local != netip.AddrPortFrom(podIP, 8080) || remote.Addr() != peerIP {
		t.Fatalf("15006 accepted %s -> %s, %v", remote, local, err)
	}
}
