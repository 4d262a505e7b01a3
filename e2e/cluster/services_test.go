package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

// proxyLab is two nodes on an underlay, each with a pod bridge (cni0,
// the gateway address) as the CNI bridge plugin makes it, and pods
// (plain network namespaces: not in the mesh) on them.
type proxyLab struct {
	lan   *netenv.LAN
	nodes []*Node
}

func newProxyLab(t *testing.T) *proxyLab {
	t.Helper()
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.44.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lan.Close() })
	hosts, err := lan.AddNodes("node-1", "node-2")
	if err != nil {
		t.Fatal(err)
	}
	l := &proxyLab{lan: lan}
	for _, h := range hosts {
		n := &Node{Name: h.Name, Host: h.Host, Addr: h.Addr, PodCIDR: h.PodCIDR, Gateway: h.PodCIDR.Addr().Next()}
		if err := n.Host.AddBridge("cni0"); err != nil {
			t.Fatal(err)
		}
		br, err := n.Host.Netlink().LinkByName("cni0")
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Host.Netlink().AddrAdd(br, &netlink.Addr{IPNet: prefixIPNet(netip.PrefixFrom(n.Gateway, 24))}); err != nil {
			t.Fatal(err)
		}
		l.nodes = append(l.nodes, n)
	}
	return l
}

// pod makes a pod namespace at ip on node n's bridge, with its default
// route through the node.
func (l *proxyLab) pod(t *testing.T, n *Node, name string, ip netip.Addr) *netenv.NS {
	t.Helper()
	ns, err := l.lan.NS(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netenv.Attach(ns, "eth0", netip.PrefixFrom(ip, 24), n.Host, "cni0"); err != nil {
		t.Fatal(err)
	}
	if err := ns.Netlink().RouteAdd(&netlink.Route{Gw: n.Gateway.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	// Hairpin mode on the bridge ports, as the bridge plugin's
	// hairpinMode gives: a pod DNATed to itself gets its packet back
	// through the port it came in by.
	br, err := n.Host.Netlink().LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	links, err := n.Host.Netlink().LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			if err := n.Host.Netlink().LinkSetHairpin(l, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ns
}

// echo serves, in ns at port, TCP and UDP: each connection or datagram is
// answered with "<name> <the source address it came from>".
func echo(t *testing.T, ns *netenv.NS, name string, port uint16) {
	t.Helper()
	at := fmt.Sprintf(":%d", port)
	ln, err := ns.Listen("tcp", at)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			c.Close()
		}
	}()
	var pc net.PacketConn
	if err := ns.Do(func() error { pc, err = net.ListenPacket("udp", at); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from.(*net.UDPAddr).AddrPort().Addr().Unmap()), from)
		}
	}()
}

// ask connects from ns to `to` and returns which server answered and the
// source address that server saw.
func ask(ctx context.Context, ns *netenv.NS, network string, to netip.AddrPort) (server string, src netip.Addr, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, network, to.String())
	if err != nil {
		return "", netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if network == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return "", netip.Addr{}, err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("%s %s: read: %w", network, to, err)
	}
	name, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	src, err = netip.ParseAddr(addr)
	return name, src, err
}

// TestServiceProxy runs the service proxy on two nodes fed by a real API
// server: a non-mesh pod reaching a ClusterIP is DNATed to an endpoint
// that sees the pod's own address (on the other node, through the
// underlay, and on its own, across the bridge), over TCP and UDP; the
// node's own processes reach it too; a pod reaching itself through a
// Service is answered; an endpoint no longer ready gets no new
// connection; a Service without ready endpoints is refused; Close leaves
// no table and no route behind.
func TestServiceProxy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces and nftables")
	}
	ctx := t.Context()
	env, err := kubetest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })

	lab := newProxyLab(t)
	n1, n2 := lab.nodes[0], lab.nodes[1]
	client := netip.MustParseAddr("10.50.1.10")
	clientNS := lab.pod(t, n1, "client", client)
	near := lab.pod(t, n1, "near", netip.MustParseAddr("10.50.1.11"))
	far := lab.pod(t, n2, "far", netip.MustParseAddr("10.50.2.10"))
	echo(t, near, "near", 8080)
	echo(t, far, "far", 8080)
	echo(t, clientNS, "client", 8080)

	// Selector-less Services: their slices are the test's to write.
	web := netip.MustParseAddrPort("10.96.7.7:80")
	self := netip.MustParseAddrPort("10.96.7.8:80")
	for name, vip := range map[string]netip.AddrPort{"web": web, "self": self} {
		_, err := env.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: vip.Addr().String(), Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 80, Protocol: corev1.ProtocolUDP},
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	webSlice := func(farReady bool, eps ...string) *discoveryv1.EndpointSlice {
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: managedBy}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: new("http"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(8080))},
				{Name: new("dns"), Protocol: new(corev1.ProtocolUDP), Port: new(int32(8080))},
			},
		}
		for _, a := range eps {
			ready := a != "10.50.2.10" || farReady
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		return sl
	}
	slices := env.Client.DiscoveryV1().EndpointSlices("default")
	if _, err := slices.Create(ctx, webSlice(true, "10.50.1.11", "10.50.2.10"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	selfSlice := webSlice(true, client.String())
	selfSlice.Name, selfSlice.Labels[discoveryv1.LabelServiceName] = "self-1", "self"
	if _, err := slices.Create(ctx, selfSlice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	p, err := startServiceProxy(env.Client, lab.nodes, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	waitEndpoints := func(vip netip.AddrPort, want int) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d endpoints of %s on node-1", want, vip), func() error {
			got, ok := p.endpointsOf(n1.Name, vip, corev1.ProtocolTCP)
			if !ok || len(got) != want {
				return fmt.Errorf("table has %v (port known: %v)", got, ok)
			}
			return nil
		})
	}
	waitEndpoints(web, 2)
	waitEndpoints(self, 1)

	t.Run("pod's address kept", func(t *testing.T) {
		seen := map[string]int{}
		for _, network := range []string{"tcp", "udp"} {
			for range 20 {
				server, src, err := ask(ctx, clientNS, network, web)
				if err != nil {
					t.Fatalf("%s to %s: %v", network, web, err)
				}
				if src != client {
					t.Fatalf("%s to %s: %s saw the connection from %s, want the client pod's own %s", network, web, server, src, client)
				}
				seen[server]++
			}
		}
		// 40 random picks of two endpoints: each is hit.
		if seen["near"] == 0 || seen["far"] == 0 {
			t.Errorf("connections per endpoint %v, want both the same node's and the other node's", seen)
		}
	})

	t.Run("node's own processes", func(t *testing.T) {
		for range 10 {
			server, src, err := ask(ctx, n1.Host, "tcp", web)
			if err != nil {
				t.Fatalf("from %s's host namespace: %v", n1.Name, err)
			}
			if src != n1.Addr {
				t.Errorf("%s saw %s, want node-1's address %s", server, src, n1.Addr)
			}
		}
	})

	t.Run("hairpin", func(t *testing.T) {
		server, src, err := ask(ctx, clientNS, "tcp", self)
		if err != nil {
			t.Fatalf("a pod reaching itself through %s: %v", self, err)
		}
		if server != "client" || src != n1.Gateway {
			t.Errorf("answered by %s seeing %s, want the client's own server seeing the node's %s", server, src, n1.Gateway)
		}
	})

	t.Run("endpoint not ready", func(t *testing.T) {
		if _, err := slices.Update(ctx, webSlice(false, "10.50.1.11", "10.50.2.10"), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitEndpoints(web, 1)
		for range 30 {
			server, _, err := ask(ctx, clientNS, "tcp", web)
			if err != nil {
				t.Fatal(err)
			}
			if server != "near" {
				t.Fatalf("a new connection went to %s, which is no longer ready", server)
			}
		}
	})

	t.Run("no ready endpoint is refused", func(t *testing.T) {
		if _, err := slices.Update(ctx, webSlice(false, "10.50.2.10"), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitEndpoints(web, 0)
		for _, from := range []*netenv.NS{clientNS, n1.Host} {
			_, _, err := ask(ctx, from, "tcp", web)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("from %s: %v, want connection refused", from.Name, err)
			}
		}
	})

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range lab.nodes {
		c, err := nftables.New(nftables.WithNetNSFd(int(n.Host.Handle())))
		if err != nil {
			t.Fatal(err)
		}
		if tbl, err := c.ListTableOfFamily(proxyTable, nftables.TableFamilyIPv4); err == nil {
			t.Errorf("%s: table %s left after Close", n.Name, tbl.Name)
		}
		routes, err := n.Host.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixIPNet(ServiceCIDR)}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) != 0 {
			t.Errorf("%s: routes to %s after Close: %v (%v)", n.Name, ServiceCIDR, routes, err)
		}
	}
}
