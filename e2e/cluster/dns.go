package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// clusterDNS is the cluster's DNS, one server per node on the node's
// address, port 53 (UDP), as a hostNetwork CoreDNS would be: the kube-dns
// Service (KubeDNSAddr, internalTrafficPolicy Local) leads each node's
// pods to their own node's server through the service proxy. It answers A
// records of Services' ClusterIPs by <service>.<namespace>.svc.<suffix>,
// an empty answer for other types of a known name, NXDOMAIN for
// everything else (no name leaves the test). With host processes instead
// of the chart there is no service proxy: each node's server listens on
// KubeDNSAddr itself.
type clusterDNS struct {
	conns []net.PacketConn
	wg    sync.WaitGroup
}

// dnsPort is the port of the cluster DNS, on the ClusterIP and the nodes.
const dnsPort = 53

func startClusterDNS(nodes []*Node, onClusterIP bool, lookup func(name string) (netip.Addr, bool)) (*clusterDNS, error) {
	d := &clusterDNS{}
	for _, n := range nodes {
		at := netip.AddrPortFrom(n.Addr, dnsPort)
		if onClusterIP {
			at = netip.AddrPortFrom(KubeDNSAddr, dnsPort)
		}
		pc, err := listenUDP(n.Host, at, onClusterIP)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("%s: cluster DNS: %w", n.Name, err)
		}
		d.conns = append(d.conns, pc)
		d.wg.Go(func() { serveDNS(pc, lookup) })
	}
	return d, nil
}

// listenUDP listens in n at at; with onLoopback the address is first put
// on n's loopback (a ClusterIP no service proxy leads anywhere).
func listenUDP(n *netenv.NS, at netip.AddrPort, onLoopback bool) (net.PacketConn, error) {
	if onLoopback {
		lo, err := n.Netlink().LinkByName("lo")
		if err != nil {
			return nil, err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: at.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := n.Netlink().AddrAdd(lo, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, err
		}
	}
	var pc net.PacketConn
	err := n.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", at.String())
		return err
	})
	return pc, err
}

func serveDNS(pc net.PacketConn, lookup func(string) (netip.Addr, bool)) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp, ok := answerDNS(buf[:n], lookup); ok {
			pc.WriteTo(resp, from)
		}
	}
}

// answerDNS answers one query; ok is false for what is not a query.
func answerDNS(req []byte, lookup func(string) (netip.Addr, bool)) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	ip, found := lookup(q.Name.String())
	if !found {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, false
	}
	b.Question(q)
	if found && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET && ip.Is4() {
		b.StartAnswers()
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
			dnsmessage.AResource{A: ip.As4()})
	}
	resp, err := b.Finish()
	return resp, err == nil
}

func (d *clusterDNS) Close() error {
	for _, c := range d.conns {
		c.Close()
	}
	d.wg.Wait()
	return nil
}

// lookupServiceIP answers <svc>.<ns>.svc.cluster.local with the Service's
// ClusterIP, asking the API server (the cluster DNS of the process mode,
// which runs no kube-proxy stand-in to hold a Service cache).
func (c *Cluster) lookupServiceIP(name string) (netip.Addr, bool) {
	svc, ns, ok := serviceName(name, "cluster.local")
	if !ok {
		return netip.Addr{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.Env.Client.CoreV1().Services(ns).Get(ctx, svc, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s.Spec.ClusterIP)
	return ip, err == nil
}
