package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// APIServiceAddr is the kubernetes Service's address (the first of the
// test env's service range) and KubeDNSAddr the cluster DNS's, as
// kubeadm's defaults have them.
var (
	APIServiceAddr = netip.MustParseAddrPort("10.96.0.1:443")
	KubeDNSAddr    = netip.MustParseAddr("10.96.0.10")
)

// serviceProxy stands in for kube-proxy: every TCP port of every ClusterIP
// Service is a forwarder at clusterIP:port in each node's host namespace
// (where pods' default routes lead), and each connection goes to a ready
// endpoint of the Service's EndpointSlices, chosen round robin and dialled
// from that node's host namespace. The kubernetes Service, which has no
// endpoints in the test env, goes to the API server on the root
// namespace's loopback. Nothing is added outside the nodes' namespaces.
type serviceProxy struct {
	nodes     []*Node
	apiServer string
	log       *slog.Logger

	services  listersv1.ServiceLister
	endpoints discoverylisters.EndpointSliceLister
	stop      chan struct{}

	mu    sync.Mutex
	fwd   map[string]io.Closer // node|ip:port
	next  atomic.Uint64
	close bool
}

func startServiceProxy(client kubernetes.Interface, nodes []*Node, apiServerURL string, log *slog.Logger) (*serviceProxy, error) {
	u, err := url.Parse(apiServerURL)
	if err != nil {
		return nil, fmt.Errorf("API server URL: %w", err)
	}
	p := &serviceProxy{nodes: nodes, apiServer: u.Host, log: log, fwd: map[string]io.Closer{}, stop: make(chan struct{})}
	inf := informers.NewSharedInformerFactory(client, 0)
	svc := inf.Core().V1().Services()
	eps := inf.Discovery().V1().EndpointSlices()
	p.services, p.endpoints = svc.Lister(), eps.Lister()
	svc.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { p.sync() }, UpdateFunc: func(any, any) { p.sync() }, DeleteFunc: func(any) { p.sync() },
	})
	eps.Informer()
	inf.Start(p.stop)
	for typ, ok := range inf.WaitForCacheSync(p.stop) {
		if !ok {
			close(p.stop)
			return nil, fmt.Errorf("service proxy: %v cache did not sync", typ)
		}
	}
	p.sync()
	return p, nil
}

// sync opens a forwarder for every Service port and closes those of
// Services gone.
func (p *serviceProxy) sync() {
	svcs, err := p.services.List(labels.Everything())
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.close {
		return
	}
	want := map[string]bool{}
	for _, s := range svcs {
		ip, err := netip.ParseAddr(s.Spec.ClusterIP)
		if err != nil {
			continue // headless or none yet
		}
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != "" {
				continue
			}
			at := netip.AddrPortFrom(ip, uint16(sp.Port))
			for _, n := range p.nodes {
				key := n.Name + "|" + at.String()
				want[key] = true
				if p.fwd[key] != nil {
					continue
				}
				ns, name, port := s.Namespace, s.Name, sp.Name
				f, err := netenv.ForwardTo(n.Host, at, func(ctx context.Context) (net.Conn, error) {
					return p.dial(ctx, n, ns, name, port)
				})
				if err != nil {
					p.log.Warn("service proxy", "service", ns+"/"+name, "dst.addr", at.String(), "reason", err.Error())
					continue
				}
				p.fwd[key] = f
			}
		}
	}
	for key, f := range p.fwd {
		if !want[key] {
			f.Close()
			delete(p.fwd, key)
		}
	}
}

// dial connects to a ready endpoint of the Service's port.
func (p *serviceProxy) dial(ctx context.Context, n *Node, ns, name, port string) (net.Conn, error) {
	if ns == "default" && name == "kubernetes" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", p.apiServer)
	}
	slices, err := p.endpoints.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	if err != nil {
		return nil, err
	}
	var eps []netip.AddrPort
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		var num int32
		for _, sp := range sl.Ports {
			if sp.Name != nil && *sp.Name == port && sp.Port != nil {
				num = *sp.Port
			}
		}
		if num == 0 {
			continue
		}
		for _, e := range sl.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					eps = append(eps, netip.AddrPortFrom(ip, uint16(num)))
				}
			}
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("service %s/%s port %q: no ready endpoint", ns, name, port)
	}
	ep := eps[p.next.Add(1)%uint64(len(eps))]
	return n.Host.Dial(ctx, "tcp", ep.String())
}

func (p *serviceProxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.close {
		return nil
	}
	p.close = true
	close(p.stop)
	var errs []error
	for key, f := range p.fwd {
		errs = append(errs, f.Close())
		delete(p.fwd, key)
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
