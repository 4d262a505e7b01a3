package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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

func setTransparent(fd int) error {
	// Both families: a dual-stack socket needs the IPv6 option too.
	err4 := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
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
}

// Listen opens a TCP listener in the pod: marked (accepted sockets inherit
// the mark; an unmarked listener's SYN-ACKs loop back into capture),
// SO_REUSEPORT (a restarting ztunnel opens its own beside it), and never
// MPTCP (the capture SOCKMAP rejects MPTCP sockets).
func (n *Netns) Listen(addr netip.AddrPort, o ListenOptions) (*net.TCPListener, error) {
	opts := []sockopt{setMark, setReusePort}
	if o.Transparent {
		opts = append(opts, setTransparent)
	}
	var ln net.Listener
	err := n.Do(func() error {
		lc := net.ListenConfig{Control: control(opts...)}
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
	family := unix.AF_INET
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: socket for %s: %w", dst, err)
	}
	closeFD := true
	defer func() {
		if closeFD {
			unix.Close(fd)
		}
	}()
	if err := setMark(fd); err != nil {
		return nil, fmt.Errorf("inpod: mark socket: %w", err)
	}
	if srcIP.IsValid() {
		if err := setTransparent(fd); err != nil {
			return nil, fmt.Errorf("inpod: transparent socket: %w", err)
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(srcIP, 0))); err != nil {
			return nil, fmt.Errorf("inpod: bind %s: %w", srcIP, err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return nil, err
		}
		src := netip.AddrPortFrom(srcIP, uint16(sockaddrPort(sa)))
		if b != nil {
			if err := b.AddBypass(dst, src); err != nil {
				return nil, fmt.Errorf("inpod: bypass %s->%s: %w", src, dst, err)
			}
			defer b.DeleteBypass(dst, src)
		}
	}
	// Connect without blocking, then wait in Go's poller, so a slow peer
	// holds the caller's goroutine and not the pod's namespace thread. The
	// socket joins the poller before connect so no readiness is missed.
	f := os.NewFile(uintptr(fd), "inpod-dial")
	closeFD = false
	defer f.Close()
	cerr := unix.Connect(fd, sockaddr(dst))
	if cerr != nil && cerr != unix.EINPROGRESS {
		return nil, fmt.Errorf("inpod: connect %s: %w", dst, cerr)
	}
	if cerr == unix.EINPROGRESS {
		if err := awaitConnect(ctx, f); err != nil {
			return nil, fmt.Errorf("inpod: connect %s: %w", dst, err)
		}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("inpod: adopt socket: %w", err)
	}
	return c.(*net.TCPConn), nil
}

// awaitConnect waits until a non-blocking connect finished and reports its
// outcome, giving up when ctx ends.
func awaitConnect(ctx context.Context, f *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var soErr error
	werr := rc.Write(func(fd uintptr) bool {
		// Connected, failed, or still in progress (then wait for the
		// socket to become writable and look again).
		if _, err := unix.Getpeername(int(fd)); err == nil {
			return true
		}
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soErr = err
		case v != 0:
			soErr = unix.Errno(v)
		default:
			return false
		}
		return true
	})
	if werr != nil {
		// The file's deadline may fire a moment before ctx's own timer.
		if dl, ok := ctx.Deadline(); ok && errors.Is(werr, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
			return context.DeadlineExceeded
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return soErr
}

func sockaddrPort(sa unix.Sockaddr) int {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port
	case *unix.SockaddrInet6:
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
