package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// APIServiceAddr is the kubernetes Service's address (the first of the
// test env's service range) and KubeDNSAddr the cluster DNS's, as
// kubeadm's defaults have them. ServiceCIDR is kubeadm's default service
// subnet, which holds the test env's range (10.96.0.0/16).
var (
	APIServiceAddr = netip.MustParseAddrPort("10.96.0.1:443")
	KubeDNSAddr    = netip.MustParseAddr("10.96.0.10")
	ServiceCIDR    = netip.MustParsePrefix("10.96.0.0/12")
)

// proxyDebounce gathers the watch events of one change (a Deployment
// scaled: a Service, then its slices) into one table write.
const proxyDebounce = 100 * time.Millisecond

// serviceProxy stands in for kube-proxy as its nftables mode works: from
// the Services and EndpointSlices in the API server it writes, in each
// node's host namespace, an nftables table (proxyTable) that DNATs every
// ClusterIP:port (TCP and UDP) to one of the port's ready endpoints,
// chosen at random per connection, for pods' traffic (prerouting: they
// route through the node) and the node's own (output: hostNetwork pods).
// The client's address is kept: endpoints on other nodes answer through
// the underlay routes, and same-node replies cross the pod bridge with
// bridge netfilter on (the namespaces' default), so conntrack undoes the
// DNAT either way. Only hairpin traffic (a pod reaching itself through a
// Service) is masqueraded. A port with no ready endpoint is rejected.
// Every change replaces a node's table in one netlink batch, so a
// half-written table is never in force.
//
// Ambient pods' traffic is captured by ztunnel inside the pod before it
// reaches the node, and ztunnel resolves Service addresses itself; what
// it sends out (HBONE to pod IPs) is never to a ClusterIP, so these rules
// only act on non-captured pods and the nodes' own processes.
type serviceProxy struct {
	nodes []*Node
	log   *slog.Logger

	services  listersv1.ServiceLister
	endpoints discoverylisters.EndpointSliceLister
	stop      chan struct{}
	kick      chan struct{}
	done      chan struct{}

	mu      sync.Mutex
	applied map[string][]svcPort     // node name → its table as last written
	routes  map[*Node]*netlink.Route // the ServiceCIDR route given to each node
	closed  bool
}

func startServiceProxy(client kubernetes.Interface, nodes []*Node, log *slog.Logger) (_ *serviceProxy, err error) {
	p := &serviceProxy{
		nodes: nodes, log: log, applied: map[string][]svcPort{}, routes: map[*Node]*netlink.Route{},
		stop: make(chan struct{}), kick: make(chan struct{}, 1), done: make(chan struct{}),
	}
	go p.loop()
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	for _, n := range nodes {
		r, err := routeServices(n)
		if err != nil {
			return nil, err
		}
		p.routes[n] = r
	}
	inf := informers.NewSharedInformerFactory(client, 0)
	svc := inf.Core().V1().Services()
	eps := inf.Discovery().V1().EndpointSlices()
	p.services, p.endpoints = svc.Lister(), eps.Lister()
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { p.changed() }, UpdateFunc: func(any, any) { p.changed() }, DeleteFunc: func(any) { p.changed() },
	}
	if _, err := svc.Informer().AddEventHandler(changed); err != nil {
		return nil, err
	}
	if _, err := eps.Informer().AddEventHandler(changed); err != nil {
		return nil, err
	}
	inf.Start(p.stop)
	for typ, ok := range inf.WaitForCacheSync(p.stop) {
		if !ok {
			return nil, fmt.Errorf("service proxy: %v cache did not sync", typ)
		}
	}
	if err := p.sync(); err != nil {
		return nil, err
	}
	return p, nil
}

// routeServices gives the node's host namespace a route for ServiceCIDR
// through its underlay link, as a node's default route would: a local
// process's connect needs a route before the output hook's DNAT picks
// the endpoint (pods' packets are DNATed before they are routed).
func routeServices(n *Node) (*netlink.Route, error) {
	link, err := linkWithAddr(n)
	if err != nil {
		return nil, err
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixIPNet(ServiceCIDR), Scope: netlink.SCOPE_LINK}
	if err := n.Host.Netlink().RouteReplace(r); err != nil {
		return nil, fmt.Errorf("%s: route %s: %w", n.Name, ServiceCIDR, err)
	}
	return r, nil
}

func linkWithAddr(n *Node) (netlink.Link, error) {
	addrs, err := n.Host.Netlink().AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == n.Addr {
			return n.Host.Netlink().LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("%s: no link holds the node address %s", n.Name, n.Addr)
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (p *serviceProxy) changed() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// loop writes the tables after each burst of changes.
func (p *serviceProxy) loop() {
	defer close(p.done)
	for {
		select {
		case <-p.stop:
			return
		case <-p.kick:
		}
		select {
		case <-p.stop:
			return
		case <-time.After(proxyDebounce):
		}
		select {
		case <-p.kick:
		default:
		}
		if err := p.sync(); err != nil {
			p.log.Warn("service proxy", "reason", err.Error())
		}
	}
}

// sync writes every node's table whose content changed.
func (p *serviceProxy) sync() error {
	svcs, err := p.services.List(labels.Everything())
	if err != nil {
		return err
	}
	slices, err := p.endpoints.List(labels.Everything())
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	var errs []error
	for _, n := range p.nodes {
		want := nodeRules(n.Name, svcs, slices)
		if have, ok := p.applied[n.Name]; ok && reflect.DeepEqual(have, want) {
			continue
		}
		if err := writeProxyTable(n, want); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			continue
		}
		p.applied[n.Name] = want
		p.log.Debug("service proxy table written", "node", n.Name, "ports", len(want))
	}
	return errors.Join(errs...)
}

// writeProxyTable replaces the node's table by one holding ports, in one
// batch: the kernel applies all of it or none.
func writeProxyTable(n *Node, ports []svcPort) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Host.Handle())))
	if err != nil {
		return err
	}
	if err := proxyTableBatch(c, ports); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", proxyTable, err)
	}
	return nil
}

// endpointsOf returns the endpoints the node's table last written sends
// vip (protocol proto) to, and whether it holds that port at all.
func (p *serviceProxy) endpointsOf(node string, vip netip.AddrPort, proto corev1.Protocol) ([]netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range p.applied[node] {
		if sp.VIP == vip && sp.Proto == proto {
			return sp.Endpoints, true
		}
	}
	return nil, false
}

// Close stops the watch and removes the tables and routes it made.
func (p *serviceProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stop)
	p.mu.Unlock()
	<-p.done
	var errs []error
	for _, n := range p.nodes {
		if _, ok := p.applied[n.Name]; !ok {
			continue
		}
		c, err := nftables.New(nftables.WithNetNSFd(int(n.Host.Handle())))
		if err == nil {
			c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: proxyTable})
			err = c.Flush()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: remove table %s: %w", n.Name, proxyTable, err))
		}
	}
	for n, r := range p.routes {
		if err := n.Host.Netlink().RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("%s: remove route %s: %w", n.Name, ServiceCIDR, err))
		}
	}
	return errors.Join(errs...)
}

// serviceIP is the ClusterIP of <svc>.<ns>.svc.<suffix>.
func (p *serviceProxy) serviceIP(name, suffix string) (netip.Addr, bool) {
	svc, ns, ok := serviceName(name, suffix)
	if !ok {
		return netip.Addr{}, false
	}
	s, err := p.services.Services(ns).Get(svc)
	if err != nil {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s.Spec.ClusterIP)
	return ip, err == nil
}

// serviceName splits <svc>.<ns>.svc.<suffix> (case-insensitive, with or
// without the final dot).
func serviceName(name, suffix string) (svc, ns string, ok bool) {
	rest, ok := strings.CutSuffix(strings.TrimSuffix(strings.ToLower(name), "."), ".svc."+suffix)
	if !ok {
		return "", "", false
	}
	svc, ns, ok = strings.Cut(rest, ".")
	if !ok || svc == "" || ns == "" || strings.Contains(ns, ".") {
		return "", "", false
	}
	return svc, ns, true
}
