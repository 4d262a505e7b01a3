package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
)

// ProxyMark is SO_MARK on every socket ztunnel opens in a pod: the pod's
// rules route marked traffic normally instead of back into capture.
const ProxyMark = 0x539

type sockopt func(fd int) error

func setMark(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, ProxyMark) }

// setTransparent lets a socket use addresses not its host's: IPv4 only
// for an IPv4 socket; both options on an IPv6 one (a dual-stack listener
// needs the IPv4 option for its mapped addresses).
func setTransparent(fd int, ipv4Only bool) error {
	err4 := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	if ipv4Only {
		return err4
	}
	err6 := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	if err4 != nil && err6 != nil {
		return err4
	}
	return nil
}

func setReusePort(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }

func control(opts ...sockopt) func(string, string, syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			for _, o := range opts {
				if err = o(int(fd)); err != nil {
					return
				}
			}
		}); cerr != nil {
			return cerr
		}
		return err
	}
}

// ListenOptions shape a proxy listener.
type ListenOptions struct {
	// Transparent is needed on 15001: its SYN-ACKs carry the original
	// destination as source.
	Transparent bool
	// KeepAlive turns TCP keepalive (Go's default period) on for accepted
	// connections: for 15008, whose peers are across the network. The
	// captured ports' peers are the pod's own apps.
	KeepAlive bool
}

// Listen opens a TCP listener in the pod: marked (accepted sockets inherit
// the mark; an unmarked listener's SYN-ACKs loop back into capture),
// SO_REUSEPORT (a restarting ztunnel opens its own beside it), and never
// MPTCP (the capture SOCKMAP rejects MPTCP sockets).
func (n *Netns) Listen(addr netip.AddrPort, o ListenOptions) (*net.TCPListener, error) {
	opts := []sockopt{setMark, setReusePort}
	if o.Transparent {
		opts = append(opts, func(fd int) error { return setTransparent(fd, false) })
	}
	var ln net.Listener
	err := n.Do(func() error {
		lc := net.ListenConfig{Control: control(opts...), KeepAlive: -1}
		if o.KeepAlive {
			lc.KeepAlive = 0
		}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: listen on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// Dial connects from the pod with a marked socket: it routes like ordinary
// traffic and is not captured again. The socket is created in the pod; the
// connect runs on the caller's goroutine.
func (n *Netns) Dial(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	return n.dial(ctx, netip.Addr{}, dst, nil)
}

// Bypass lets one 4-tuple through capture (the pod's bypass map).
type Bypass interface {
	AddBypass(local, remote netip.AddrPort) error
	DeleteBypass(local, remote netip.AddrPort) error
}

// DialTransparent connects to dst (the pod's app) from srcIP, an address
// not the pod's own (the original client), so the app sees the real
// caller. The port is a fresh ephemeral one: the client's own port may
// still be in use in this namespace by the captured connection being
// proxied (same 4-tuple, reversed), as Istio also does. The 4-tuple is put
// in the bypass map between bind and connect, so capture does not take the
// dial for new inbound traffic, and removed after.
func (n *Netns) DialTransparent(ctx context.Context, srcIP netip.Addr, dst netip.AddrPort, b Bypass) (*net.TCPConn, error) {
	return n.dial(ctx, srcIP, dst, b)
}

func (n *Netns) dial(ctx context.Context, srcIP netip.Addr, dst netip.AddrPort, b Bypass) (*net.TCPConn, error) {
	network, stock := "tcp4", 0
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		network, stock = "tcp6", 1
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	fd, err := n.takeSocket(stock)
	if err != nil {
		return nil, fmt.Errorf("inpod: socket for %s: %w", dst, err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	var bypassed netip.AddrPort
	d := net.Dialer{
		// The leg to the pod's app stays on the node: nothing for
		// keepalive to find. Other dials keep Go's default.
		KeepAlive: keepAliveFor(srcIP.IsValid()),
		// Go's dialer makes its socket in ztunnel's own namespace; before
		// it binds or connects, the pod's socket takes that descriptor's
		// place (dup3), so Go's poller, connect wait and *net.TCPConn
		// serve the pod's socket with no extra copy of the descriptor.
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			cerr := rc.Control(func(goFD uintptr) {
				if err = unix.Dup3(fd, int(goFD), unix.O_CLOEXEC); err != nil {
					err = fmt.Errorf("take the pod's socket: %w", err)
					return
				}
				unix.Close(fd)
				fd = -1
				bypassed, err = prepareDial(int(goFD), srcIP, dst, b)
			})
			return errors.Join(cerr, err)
		},
	}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(ctx, network, dst.String())
	if bypassed.IsValid() {
		b.DeleteBypass(dst, bypassed)
	}
	if err != nil {
		var oe *net.OpError
		dl, hasDL := ctx.Deadline()
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case hasDL && !time.Now().Before(dl):
			// Go's dialer times out on ctx's deadline a moment before
			// ctx's own timer marks it done.
			err = context.DeadlineExceeded
		case errors.As(err, &oe) && oe.Err != nil:
			err = oe.Err // the address is in our own message
		}
		return nil, fmt.Errorf("inpod: connect %s: %w", dst, err)
	}
	return c.(*net.TCPConn), nil
}

func keepAliveFor(transparent bool) time.Duration {
	if transparent {
		return -1
	}
	return 0
}

// prepareDial marks a pod socket and, for a transparent dial, binds it to
// srcIP and lets its 4-tuple past capture. It returns the bound source
// (zero if not transparent).
func prepareDial(fd int, srcIP netip.Addr, dst netip.AddrPort, b Bypass) (netip.AddrPort, error) {
	if err := setMark(fd); err != nil {
		return netip.AddrPort{}, fmt.Errorf("mark socket: %w", err)
	}
	if !srcIP.IsValid() {
		return netip.AddrPort{}, nil
	}
	if err := setTransparent(fd, dst.Addr().Is4()); err != nil {
		return netip.AddrPort{}, fmt.Errorf("transparent socket: %w", err)
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(srcIP, 0))); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bind %s: %w", srcIP, err)
	}
	// syscall's Getsockname, not x/sys/unix's: the latter asks the socket
	// its protocol (one more syscall per dial) to tell L2TP from TCP.
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bound port: %w", err)
	}
	src := netip.AddrPortFrom(srcIP, uint16(sockaddrPort(sa)))
	if b == nil {
		return netip.AddrPort{}, nil
	}
	if err := b.AddBypass(dst, src); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bypass %s->%s: %w", src, dst, err)
	}
	return src, nil
}

func sockaddrPort(sa syscall.Sockaddr) int {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return sa.Port
	case *syscall.SockaddrInet6:
		return sa.Port
	}
	return 0
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		return &unix.SockaddrInet4{Addr: ap.Addr().Unmap().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// Steer puts ln in a slot of the pod's capture SOCKMAP, so the capture
// program sends the slot's connections to it.
func Steer(maps *bpf.PodMaps, slot bpf.Listener, ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = maps.SetListener(slot, fd) }); err != nil {
		return err
	}
	return serr
}
