package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// Ports ztunnel listens on inside each pod.
const (
	OutboundPort     = 15001
	InboundPlainPort = 15006
	InboundPort      = 15008
	SOCKS5Port       = 15080
)

// Config wires a Proxy to the rest of ztunnel.
type Config struct {
	// Node and Network are this ztunnel's node name and network.
	Node, Network string
	// TrustDomain of local identities; default cluster.local.
	TrustDomain spiffeid.TrustDomain
	State       *state.Store
	// Certs hands out local pods' certificates and the trust bundle.
	Certs     identity.Source
	Telemetry *telemetry.Telemetry
	Log       *slog.Logger
	// Grace is how long a drained pod's connections may run on: default 30 s.
	Grace time.Duration
	// CertTimeout bounds the certificate fetch of AddPod: default 10 s.
	CertTimeout time.Duration
	// Demand, if set, asks the control plane for an address the state does
	// not know (the xDS client's on-demand request).
	Demand AddressDemander
	// HoldUnknown bounds how long an outbound connection to an unknown
	// address in the mesh's ranges waits for it: default 1 s.
	HoldUnknown time.Duration
	// NoSOCKS5 turns the 127.0.0.1:15080 listener off.
	NoSOCKS5 bool
	Pool     hbone.PoolConfig // MaxStreamsPerConn, IdleTimeout, Options; Dial/TLS are set per pod
	// HBONELimits bound each pod's HBONE server (per pod and per peer
	// identity); zero fields are the hbone defaults.
	HBONELimits hbone.Limits
}

// Proxy runs the data path of every pod handed to it over ZDS. It is an
// inpod.Handler.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	rr      atomic.Uint64
	rejects *logLimiter // log lines of refused connections and requests
	// held counts outbound connections waiting for an unknown address.
	held atomic.Int64

	mu       sync.Mutex
	pods     map[string]*pod
	draining bool
	wg       sync.WaitGroup // drains and accept loops
}

// New validates cfg.
func New(cfg Config) (*Proxy, error) {
	if cfg.State == nil || cfg.Certs == nil || cfg.Telemetry == nil {
		return nil, errors.New("proxy: State, Certs and Telemetry are required")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.CertTimeout <= 0 {
		cfg.CertTimeout = 10 * time.Second
	}
	if cfg.HoldUnknown <= 0 {
		cfg.HoldUnknown = time.Second
	}
	return &Proxy{cfg: cfg, log: cfg.Log, pods: map[string]*pod{}, rejects: newLogLimiter(rejectBurst, rejectRate, nil)}, nil
}

// pod is one captured pod's listeners and connections.
type pod struct {
	uid, name, namespace string
	id                   spiffeid.ID
	ips                  []netip.Addr
	netns                *inpod.Netns
	maps                 *bpf.PodMaps

	listeners []net.Listener
	hbone     *hbone.Server
	pool      *hbone.Pool
	conns     tracker
	ctx       context.Context // cancelled when the pod is cut
	cancel    context.CancelFunc
}

func (pd *pod) hasIP(a netip.Addr) bool { return slices.Contains(pd.ips, a.Unmap()) }

func (pd *pod) String() string { return pd.namespace + "/" + pd.name }

// AddPod fetches the pod's certificate, opens its listeners in its netns,
// steers capture to them, and only then returns (the agent's ack lets the
// pod start). A pod already served keeps its listeners.
func (p *Proxy) AddPod(ctx context.Context, ip *inpod.Pod) (err error) {
	p.mu.Lock()
	_, known := p.pods[ip.UID]
	draining := p.draining
	p.mu.Unlock()
	if known || draining {
		ip.Netns.Close()
		ip.Maps.Close()
		if draining {
			return errors.New("ztunnel is draining")
		}
		return nil
	}
	defer func() {
		if err != nil {
			ip.Netns.Close()
			ip.Maps.Close()
		}
	}()
	id, err := identity.WorkloadID(p.cfg.TrustDomain, ip.Namespace, ip.ServiceAccount)
	if err != nil {
		return fmt.Errorf("pod identity: %w", err)
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CertTimeout)
	_, err = p.cfg.Certs.SVID(cctx, id)
	cancel()
	certTook := time.Since(start)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", id, err)
	}
	pd := &pod{uid: ip.UID, name: ip.Name, namespace: ip.Namespace, id: id, netns: ip.Netns, maps: ip.Maps}
	for _, a := range ip.IPs {
		pd.ips = append(pd.ips, a.Unmap())
	}
	pd.ctx, pd.cancel = context.WithCancel(context.Background())
	if err := p.open(pd); err != nil {
		pd.cancel()
		p.forgetIdentity(id)
		return err
	}
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		p.cut(pd)
		return errors.New("ztunnel is draining")
	}
	p.pods[pd.uid] = pd
	p.mu.Unlock()
	for _, ln := range pd.listeners {
		p.wg.Add(1)
		go p.acceptLoop(pd, ln)
	}
	p.wg.Add(1)
	go p.watchPolicy(pd)
	p.log.Info("pod added", "pod", pd.String(), "uid", pd.uid, "identity", id.String(), "ips", pd.ips,
		"certificate", certTook.Round(time.Millisecond).String(), "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// open creates the pod's listeners and its HBONE client pool.
func (p *Proxy) open(pd *pod) (err error) {
	defer func() {
		if err != nil {
			for _, ln := range pd.listeners {
				ln.Close()
			}
			pd.listeners = nil
		}
	}()
	any := netip.IPv4Unspecified()
	for _, a := range pd.ips {
		if a.Is6() {
			any = netip.IPv6Unspecified() // dual stack
		}
	}
	listen := func(port uint16, o inpod.ListenOptions) (*net.TCPListener, error) {
		ln, err := pd.netns.Listen(netip.AddrPortFrom(any, port), o)
		if err == nil {
			pd.listeners = append(pd.listeners, ln)
		}
		return ln, err
	}
	out, err := listen(OutboundPort, inpod.ListenOptions{Transparent: true})
	if err != nil {
		return err
	}
	plain, err := listen(InboundPlainPort, inpod.ListenOptions{})
	if err != nil {
		return err
	}
	if _, err := listen(InboundPort, inpod.ListenOptions{KeepAlive: true}); err != nil {
		return err
	}
	if !p.cfg.NoSOCKS5 {
		ln, err := pd.netns.Listen(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), SOCKS5Port), inpod.ListenOptions{})
		if err != nil {
			return err
		}
		pd.listeners = append(pd.listeners, ln)
	}
	hlog := slog.New(limitedHandler{p.log.Handler(), p.rejects}).With("pod", pd.String())
	pd.hbone, err = hbone.NewServer(p.inboundHandler(pd), hbone.ServerOptions{
		Logger:  hlog,
		Limits:  p.cfg.HBONELimits,
		OnLimit: p.cfg.Telemetry.HBONELimit(telemetry.Inbound),
	})
	if err != nil {
		return err
	}
	pc := p.cfg.Pool
	pc.Options.OnLimit = p.cfg.Telemetry.HBONELimit(telemetry.Outbound)
	pc.Dial = func(ctx context.Context, k hbone.Key) (net.Conn, error) { return pd.netns.Dial(ctx, k.Dst) }
	pc.TLS = func(k hbone.Key) (*tls.Config, error) {
		return identity.ClientTLS(p.cfg.Certs, k.SrcID, []spiffeid.ID{k.DstID}), nil
	}
	if pd.pool, err = hbone.NewPool(pc); err != nil {
		return err
	}
	// Steer capture last: from here the pod's traffic reaches us.
	if err := inpod.Steer(pd.maps, bpf.Outbound, out); err != nil {
		pd.pool.Close()
		return err
	}
	if err := inpod.Steer(pd.maps, bpf.Inbound, plain); err != nil {
		pd.pool.Close()
		return err
	}
	return nil
}

func (p *Proxy) acceptLoop(pd *pod, ln net.Listener) {
	defer p.wg.Done()
	port := ln.Addr().(*net.TCPAddr).Port
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		if !pd.conns.add(c) {
			c.Close()
			continue
		}
		go func() {
			defer pd.conns.remove(c)
			defer c.Close()
			switch port {
			case OutboundPort:
				p.outbound(pd, c.(*net.TCPConn))
			case InboundPlainPort:
				p.inboundPlain(pd, c.(*net.TCPConn))
			case InboundPort:
				p.inboundHBONE(pd, c)
			case SOCKS5Port:
				p.socks5(pd, c.(*net.TCPConn))
			}
		}()
	}
}

// DelPod stops a pod's listeners and drains its connections in the
// background for the grace period.
func (p *Proxy) DelPod(ctx context.Context, uid string) error {
	p.mu.Lock()
	pd := p.pods[uid]
	delete(p.pods, uid)
	p.mu.Unlock()
	if pd == nil {
		return nil
	}
	p.log.Info("pod removed", "pod", pd.String(), "uid", uid)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.drainPod(pd)
	}()
	return nil
}

// Reconcile drops pods the agent no longer lists.
func (p *Proxy) Reconcile(ctx context.Context, keep map[string]bool) error {
	p.mu.Lock()
	var gone []string
	for uid := range p.pods {
		if !keep[uid] {
			gone = append(gone, uid)
		}
	}
	p.mu.Unlock()
	for _, uid := range gone {
		p.DelPod(ctx, uid)
	}
	return nil
}

// drainPod closes the pod's listeners at once (a new ztunnel's listeners
// inherit their queues: tcp_migrate_req), tells HBONE clients to go away,
// lets connections finish for the grace period, then cuts the rest.
func (p *Proxy) drainPod(pd *pod) {
	for _, ln := range pd.listeners {
		ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Grace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pd.hbone.Shutdown(ctx)
	}()
	pd.conns.drain(ctx)
	p.cut(pd)
	wg.Wait()
	p.forgetIdentity(pd.id)
}

// forgetter is the part of identity.Manager that drops an identity: a
// Source that has it stops renewing certificates nobody here uses.
type forgetter interface{ Forget(spiffeid.ID) }

// forgetIdentity drops id's certificate once no pod served here runs as
// it: a removed pod's certificate is neither kept nor renewed. A pod that
// takes the identity again fetches it anew.
func (p *Proxy) forgetIdentity(id spiffeid.ID) {
	f, ok := p.cfg.Certs.(forgetter)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return // the process is ending: nothing is renewed for long
	}
	for _, other := range p.pods {
		if other.id == id {
			return
		}
	}
	f.Forget(id)
	p.log.Debug("certificate forgotten", "identity", id.String())
}

// cut ends everything of a pod now.
func (p *Proxy) cut(pd *pod) {
	pd.cancel()
	for _, ln := range pd.listeners {
		ln.Close()
	}
	if pd.pool != nil {
		pd.pool.Close()
	}
	pd.netns.Close()
	pd.maps.Close()
}

// Drain is SIGTERM: every pod is drained for the grace period (or until
// ctx ends) and Drain returns when all are done. New pods are refused.
func (p *Proxy) Drain(ctx context.Context) {
	p.mu.Lock()
	p.draining = true
	pods := p.pods
	p.pods = map[string]*pod{}
	p.mu.Unlock()
	for _, pd := range pods {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.drainPod(pd)
		}()
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, pd := range pods {
			pd.conns.drain(ctx) // ctx is done: cuts at once
		}
		<-done
	}
}

// PodInfo describes a served pod (for the admin config dump).
type PodInfo struct {
	UID         string   `json:"uid"`
	Name        string   `json:"name"`
	Namespace   string   `json:"namespace"`
	Identity    string   `json:"identity"`
	IPs         []string `json:"ips"`
	Connections int      `json:"connections"`
}

// Pods lists the pods served, by namespace/name.
func (p *Proxy) Pods() []PodInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PodInfo, 0, len(p.pods))
	for _, pd := range p.pods {
		pi := PodInfo{UID: pd.uid, Name: pd.name, Namespace: pd.namespace, Identity: pd.id.String(), Connections: pd.conns.count()}
		for _, a := range pd.ips {
			pi.IPs = append(pi.IPs, a.String())
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b PodInfo) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// AddressDemander asks the control plane for one address on demand.
type AddressDemander interface {
	// DemandAddress asks for addr; release withdraws the request.
	DemandAddress(addr state.NetAddr) (release func())
}
