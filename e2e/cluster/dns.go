package cluster

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// clusterDNS is the cluster's DNS, one server per node on the node's
// address, port 53 (UDP), as a hostNetwork CoreDNS would be: the kube-dns
// Service (KubeDNSAddr, internalTrafficPolicy Local) leads each node's
// pods to their own node's server through the service proxy. It answers A
// records of Services' ClusterIPs by <service>.<namespace>.svc.<suffix>,
// an empty answer for other types of a known name, NXDOMAIN for
// everything else (no name leaves the test).
type clusterDNS struct {
	conns []net.PacketConn
	wg    sync.WaitGroup
}

// dnsPort is the port of the cluster DNS, on the ClusterIP and the nodes.
const dnsPort = 53

func startClusterDNS(nodes []*Node, lookup func(name string) (netip.Addr, bool)) (*clusterDNS, error) {
	d := &clusterDNS{}
	for _, n := range nodes {
		var pc net.PacketConn
		err := n.Host.Do(func() error {
			var err error
			pc, err = net.ListenPacket("udp", netip.AddrPortFrom(n.Addr, dnsPort).String())
			return err
		})
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("%s: cluster DNS: %w", n.Name, err)
		}
		d.conns = append(d.conns, pc)
		d.wg.Go(func() { serveDNS(pc, lookup) })
	}
	return d, nil
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
