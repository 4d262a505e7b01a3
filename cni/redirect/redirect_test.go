package redirect

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/ztunnel/inpod"
)

type pod struct {
	ns   *netenv.NS
	ip4  netip.Addr
	ip6  netip.Addr
	peer *netenv.NS
	cfg  Config
}

func newPod(t *testing.T, prefix string) *pod {
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
	ns, ip4, err := lan.Host("pod")
	if err != nil {
		t.Fatal(err)
	}
	peer, peerIP, err := lan.Host("peer")
	if err != nil {
		t.Fatal(err)
	}
	ip6 := netip.MustParseAddr("fd00:81::2")
	if err := netenv.AddAddr(ns, "eth0", netip.PrefixFrom(ip6, 64)); err != nil {
		t.Fatal(err)
	}
	return &pod{ns: ns, ip4: ip4, ip6: ip6, peer: peer, cfg: Config{
		PodIPs:       []netip.Addr{ip4, ip6},
		ProbeSources: []netip.Addr{peerIP},
	}}
}

func countRules(t *testing.T, p *pod, pref int) int {
	t.Helper()
	n := 0
	for _, af := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := p.ns.Netlink().RuleList(af)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.Priority == pref {
				n++
			}
		}
	}
	return n
}

func sysctl(t *testing.T, p *pod, key string) string {
	t.Helper()
	var v string
	if err := p.ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		v = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestApplyIsIdempotentAndRemoveCleansUp(t *testing.T) {
	p := newPod(t, "10.82.0.0/24")
	h := p.ns.Handle()
	for range 2 {
		if err := Apply(h, p.cfg); err != nil {
			t.Fatal(err)
		}
	}
	if err := Check(h, p.cfg); err != nil {
		t.Fatalf("check after apply: %v", err)
	}
	if n := countRules(t, p, prefTCP); n != 2 {
		t.Errorf("%d ipproto-tcp rules after applying twice, want 2 (one per family)", n)
	}
	if n := countRules(t, p, prefProbe); n != 1 {
		t.Errorf("%d probe rules, want 1 (the IPv4 probe source)", n)
	}
	if v := sysctl(t, p, "net/ipv4/conf/eth0/accept_local"); v != "1" {
		t.Errorf("accept_local = %s", v)
	}
	if v := sysctl(t, p, "net/ipv4/tcp_migrate_req"); v != "1" {
		t.Errorf("tcp_migrate_req = %s", v)
	}

	// Something removed by hand is reported by Check, and Apply restores it.
	tcp := p.cfg.rules(p.cfg.families()[0])
	if err := p.ns.Netlink().RuleDel(tcp[len(tcp)-1]); err != nil {
		t.Fatal(err)
	}
	err := Check(h, p.cfg)
	if err == nil || !strings.Contains(err.Error(), "table 100") {
		t.Fatalf("check with the tcp rule deleted: %v", err)
	}
	if err := Apply(h, p.cfg); err != nil {
		t.Fatal(err)
	}
	if err := Check(h, p.cfg); err != nil {
		t.Fatalf("check after re-apply: %v", err)
	}

	for range 2 {
		if err := Remove(h, p.cfg); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
	for _, pref := range []int{prefProbe, prefMark, prefTCP} {
		if n := countRules(t, p, pref); n != 0 {
			t.Errorf("%d rules at pref %d left after remove", n, pref)
		}
	}
	for _, af := range []int{unix.AF_INET, unix.AF_INET6} {
		routes, err := p.ns.Netlink().RouteListFiltered(af, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 0 {
			t.Errorf("table %d still has %v", Table, routes)
		}
	}
	if v := sysctl(t, p, "net/ipv4/conf/eth0/accept_local"); v != "0" {
		t.Errorf("accept_local = %s after remove", v)
	}
	if err := Check(h, p.cfg); err == nil {
		t.Error("check passes after remove")
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{PodIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}},
	} {
		if err := Apply(0, cfg); err == nil || !strings.Contains(err.Error(), "redirect:") {
			t.Errorf("Apply(%v) = %v, want a clear error", cfg.PodIPs, err)
		}
	}
}

// With the routing applied and the sk_lookup program attached, the pod's
// outbound TCP (both families) reaches the proxy's 15001 listener, and UDP
// is untouched.
func TestRoutingAndProgramCapture(t *testing.T) {
	p := newPod(t, "10.83.0.0/24")
	if err := Apply(p.ns.Handle(), p.cfg); err != nil {
		t.Fatal(err)
	}
	c, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := c.Attach(int(p.ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := c.Enroll(p.ip4, p.ip6); err != nil {
		t.Fatal(err)
	}
	nsfd, err := unix.FcntlInt(uintptr(p.ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := inpod.Open(nsfd)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ln, err := n.Listen(netip.MustParseAddrPort("[::]:15001"), inpod.ListenOptions{Transparent: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, _ := ln.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = c.SetListener(bpf.Outbound, fd) })
	if serr != nil {
		t.Fatal(serr)
	}

	for _, dst := range []string{"192.0.2.10:443", "[2001:db8::10]:443"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := p.ns.Dial(ctx, "tcp", dst)
		cancel()
		if err != nil {
			t.Fatalf("dial %s from the pod: %v", dst, err)
		}
		ln.SetDeadline(time.Now().Add(2 * time.Second))
		got, err := ln.Accept()
		if err != nil {
			t.Fatalf("15001 did not get %s: %v", dst, err)
		}
		orig := got.LocalAddr().(*net.TCPAddr).AddrPort()
		if netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port()).String() != dst {
			t.Errorf("original destination %s, want %s", orig, dst)
		}
		got.Close()
		conn.Close()
	}

	// UDP keeps the kernel's path: a datagram to the peer leaves the pod
	// (delivered locally through table 100, it would never arrive).
	peerAddr := net.JoinHostPort(p.cfg.ProbeSources[0].String(), "5353")
	var pc net.PacketConn
	if err := p.peer.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", peerAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := p.ns.Do(func() error {
		uc, err := net.Dial("udp", peerAddr)
		if err != nil {
			return err
		}
		defer uc.Close()
		_, err = uc.Write([]byte("udp"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 8)
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "udp" {
		t.Fatalf("udp from the captured pod to its peer: %q, %v", buf[:n], err)
	}
}

// With no ztunnel listening on 15008, a peer's HBONE connect is refused at
// once: the kernel's reset (unmarked) must leave the pod, not be delivered
// back into it by the capture route. Connections to a pod whose 15008 is
// gone must fail within a second, not hang.
func TestHBONEPortRefusesWhenNobodyListens(t *testing.T) {
	p := newPod(t, "10.84.0.0/24")
	cfg := p.cfg
	cfg.ProbeSources = nil // the peer must not be exempt as a probe source
	if err := Apply(p.ns.Handle(), cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	c, err := p.peer.Dial(ctx, "tcp", netip.AddrPortFrom(p.ip4, HBONEPort).String())
	if err == nil {
		c.Close()
		t.Fatal("connected to a port nobody listens on")
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("dial after %v: %v, want connection refused", time.Since(start).Round(time.Millisecond), err)
	}
}
