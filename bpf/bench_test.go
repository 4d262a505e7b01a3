package bpf

import (
	"context"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// BenchmarkCaptureConnectEcho measures what capture alone costs a
// connection: connect, 1 kB echo, close, from a pod to an echo server on
// another host, directly vs. through the sk_lookup redirect to a trivial
// pass-through listener on 15001 (which dials the original destination
// with a marked socket, as ztunnel's outbound would without HBONE).
func BenchmarkCaptureConnectEcho(b *testing.B) {
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.87.0.0/24"))
	if err != nil {
		b.Fatalf("need root: %v", err)
	}
	b.Cleanup(func() { lan.Close() })
	server, serverIP, err := lan.Host("server")
	if err != nil {
		b.Fatal(err)
	}
	plain, _, err := lan.Host("plain")
	if err != nil {
		b.Fatal(err)
	}
	captured, capturedIP, err := lan.Host("captured")
	if err != nil {
		b.Fatal(err)
	}
	echo, err := server.Listen("tcp", netip.AddrPortFrom(serverIP, 7).String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { echo.Close() })
	go acceptLoop(echo, func(c net.Conn) { io.Copy(c, c) })

	routeLocallyB(b, captured, capturedIP)
	c, err := Load()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	l, err := c.Attach(int(captured.Handle()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if err := c.Enroll(capturedIP); err != nil {
		b.Fatal(err)
	}
	var ln net.Listener
	if err := captured.Do(func() error {
		lc := net.ListenConfig{Control: markTransparent}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", "0.0.0.0:15001")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	rc, _ := ln.(*net.TCPListener).SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = c.SetListener(Outbound, fd) })
	if serr != nil {
		b.Fatal(serr)
	}
	// The pass-through proxy: dial the original destination from inside
	// the pod with a marked socket (which routes normally), then splice.
	go acceptLoop(ln, func(in net.Conn) {
		var up net.Conn
		err := captured.Do(func() error {
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x539) })
				return serr
			}}
			var err error
			up, err = d.Dial("tcp", in.LocalAddr().String())
			return err
		})
		if err != nil {
			return
		}
		defer up.Close()
		go func() { io.Copy(up, in); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(in, up)
	})

	msg := make([]byte, 1024)
	buf := make([]byte, 1024)
	target := netip.AddrPortFrom(serverIP, 7).String()
	for _, tc := range []struct {
		name string
		ns   *netenv.NS
	}{{"direct", plain}, {"captured", captured}} {
		b.Run(tc.name, func(b *testing.B) {
			// One locked thread in the pod's namespace for the whole run:
			// the dial cost, not the namespace switch, is measured.
			err := tc.ns.Do(func() error {
				for b.Loop() {
					conn, err := net.Dial("tcp", target)
					if err != nil {
						return err
					}
					if _, err := conn.Write(msg); err != nil {
						return err
					}
					if _, err := io.ReadFull(conn, buf); err != nil {
						return err
					}
					conn.Close()
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

func acceptLoop(ln net.Listener, serve func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); serve(c) }()
	}
}

func markTransparent(_, _ string, rc syscall.RawConn) error {
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x539)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	return serr
}
