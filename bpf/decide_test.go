package bpf

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// skLookup mirrors the kernel's struct bpf_sk_lookup, the context
// BPF_PROG_TEST_RUN feeds the program.
type skLookup struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16 // network order
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32 // host order
	IngressIfindex uint32
	_              uint32 // the kernel struct is padded to 8 bytes
}

func lookupCtx(proto uint32, remote, local netip.AddrPort) skLookup {
	c := skLookup{Protocol: proto, LocalPort: uint32(local.Port())}
	// Stored as the bytes of a big-endian port, read back natively.
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], remote.Port())
	c.RemotePort = binary.NativeEndian.Uint16(be[:])
	if local.Addr().Is4() {
		c.Family = unix.AF_INET
		c.RemoteIP4, c.LocalIP4 = ipWord(remote.Addr()), ipWord(local.Addr())
	} else {
		c.Family = unix.AF_INET6
		c.RemoteIP6, c.LocalIP6 = ipWords(remote.Addr()), ipWords(local.Addr())
	}
	return c
}

func cookieOf(t *testing.T, ln *net.TCPListener) uint64 {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var gerr error
	rc.Control(func(fd uintptr) { cookie, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return cookie
}

// TestDecisions runs the program in the kernel with BPF_PROG_TEST_RUN over
// a table of lookups, checking the verdict and which listener it picked.
func TestDecisions(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out4, in4 := listen4(t), listen4(t)
	out6, in6 := listen6(t), listen6(t)

	pod4, pod6 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00::2")
	probe := netip.MustParseAddr("10.1.0.1")
	bypassed := netip.MustParseAddrPort("10.9.9.9:41000")
	if err := c.Enroll(pod4, pod6); err != nil {
		t.Fatal(err)
	}
	if err := c.AddProbeSource(probe); err != nil {
		t.Fatal(err)
	}
	if err := c.AddBypass(netip.AddrPortFrom(pod4, 8080), bypassed); err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	const tcp, udp = unix.IPPROTO_TCP, unix.IPPROTO_UDP
	type want int
	const (
		outbound want = iota
		inbound
		pass
		drop
	)
	cases := []struct {
		name          string
		proto         uint32
		remote, local netip.AddrPort
		want          want
	}{
		{"v4 outbound", tcp, ap("10.1.0.2:5555"), ap("10.99.1.1:80"), outbound},
		{"v4 inbound", tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:8080"), inbound},
		{"v4 inbound to HBONE port", tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:15008"), pass},
		{"v4 inbound to 15001", tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:15001"), pass},
		{"v4 inbound to 15006", tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:15006"), pass},
		{"v4 inbound to DNS port", tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:15053"), pass},
		{"v4 pod to itself", tcp, ap("10.1.0.2:5555"), ap("10.1.0.2:8080"), pass},
		{"v4 loopback", tcp, ap("127.0.0.1:5555"), ap("127.0.0.1:8080"), pass},
		{"v4 probe source", tcp, ap("10.1.0.1:5555"), ap("10.1.0.2:8080"), pass},
		{"v4 bypassed tuple", tcp, bypassed, ap("10.1.0.2:8080"), pass},
		{"v4 bypass is per tuple", tcp, ap("10.9.9.9:41001"), ap("10.1.0.2:8080"), inbound},
		{"v4 udp", udp, ap("10.1.0.2:5555"), ap("10.99.1.1:53"), pass},
		{"v6 outbound", tcp, ap("[fd00::2]:5555"), ap("[2001:db8::1]:443"), outbound},
		{"v6 inbound", tcp, ap("[fd00::7]:5555"), ap("[fd00::2]:8080"), inbound},
		{"v6 loopback", tcp, ap("[::1]:5555"), ap("[::1]:8080"), pass},
		{"v6 pod to itself", tcp, ap("[fd00::2]:5555"), ap("[fd00::2]:8080"), pass},
	}
	run := func(t *testing.T, ctx skLookup) (uint32, uint64) {
		t.Helper()
		var out skLookup
		ret, err := c.objs.ZmeshCapture.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out})
		if err != nil {
			t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
		}
		return ret, out.Cookie
	}
	setListeners := func(t *testing.T, v6 bool) (uint64, uint64) {
		out, in := out4, in4
		if v6 {
			out, in = out6, in6
		}
		fdOf(t, out, func(fd uintptr) error { return c.SetListener(Outbound, fd) })
		fdOf(t, in, func(fd uintptr) error { return c.SetListener(Inbound, fd) })
		return cookieOf(t, out), cookieOf(t, in)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outCookie, inCookie := setListeners(t, tc.local.Addr().Is6())
			ret, cookie := run(t, lookupCtx(tc.proto, tc.remote, tc.local))
			var wantRet uint32 = 1 // SK_PASS
			var wantCookie uint64
			switch tc.want {
			case outbound:
				wantCookie = outCookie
			case inbound:
				wantCookie = inCookie
			case drop:
				wantRet = 0
			}
			if ret != wantRet || cookie != wantCookie {
				t.Errorf("verdict %d socket %d, want %d socket %d (outbound %d, inbound %d)", ret, cookie, wantRet, wantCookie, outCookie, inCookie)
			}
		})
	}

	t.Run("missing listener drops", func(t *testing.T) {
		setListeners(t, false)
		if err := c.ClearListener(Inbound); err != nil {
			t.Fatal(err)
		}
		if ret, _ := run(t, lookupCtx(tcp, ap("10.7.0.9:5555"), ap("10.1.0.2:8080"))); ret != 0 {
			t.Errorf("verdict %d, want SK_DROP", ret)
		}
	})
	t.Run("released pod passes", func(t *testing.T) {
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
		if ret, cookie := run(t, lookupCtx(tcp, ap("10.1.0.2:5555"), ap("10.99.1.1:80"))); ret != 1 || cookie != 0 {
			t.Errorf("verdict %d socket %d, want pass with no socket", ret, cookie)
		}
	})
}

func listen4(t *testing.T) *net.TCPListener {
	t.Helper()
	// SOCKMAP takes no MPTCP sockets, Go's default for listeners.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp4", net.JoinHostPort(net.IPv4(127, 0, 0, 1).String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(*net.TCPListener)
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listen6(t *testing.T) *net.TCPListener {
	t.Helper()
	// SOCKMAP takes no MPTCP sockets, Go's default for listeners.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp6", net.JoinHostPort(net.IPv6loopback.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(*net.TCPListener)
	t.Cleanup(func() { ln.Close() })
	return ln
}
