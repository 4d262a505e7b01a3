package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// ConnectTimeout bounds establishing the upstream of one connection.
const ConnectTimeout = 10 * time.Second

// outbound serves a connection the pod's app opened and capture steered to
// 15001: the accepted socket's local address is the original destination.
func (p *Proxy) outbound(pd *pod, c *net.TCPConn) {
	src := unmapped(c.RemoteAddr().(*net.TCPAddr).AddrPort())
	dst := unmapped(c.LocalAddr().(*net.TCPAddr).AddrPort())
	bp := earlyPool.Get().(*[]byte)
	early := readEarly(c, *bp)
	up, tel, err := p.connect(pd, src, dst, early, true)
	earlyPool.Put(bp)
	if err != nil {
		// A refusal is a reset: an app that sees an orderly end may take
		// it for an empty answer.
		c.SetLinger(0)
		return
	}
	defer up.Close()
	sent, recv, err := hbone.Join(c, up)
	if st, ok := up.(*hbone.Stream); ok && !st.Answered() {
		// The tunnel was joined before its answer, which was a refusal
		// (Join has reset c): recorded as a failed connect, as if
		// connect had waited for it.
		err = refusal(err)
		tel.Close(telemetry.Result{Err: err, Flags: flagFor(err)})
		return
	}
	tel.Close(telemetry.Result{Sent: int64(len(early)) + sent, Received: recv, Err: ignoreClosed(err)})
}

// refusal picks, from what Join returned for a tunnel never answered 200,
// the server's refusal or the end that came instead of an answer.
func refusal(err error) error {
	var se *hbone.StatusError
	if errors.As(err, &se) {
		return se
	}
	var na *hbone.NotAnsweredError
	if errors.As(err, &na) {
		return na
	}
	return err
}

// earlyMax bounds the early data of a connection: one TLS record.
const earlyMax = 16 << 10

var earlyPool = sync.Pool{New: func() any { b := make([]byte, earlyMax); return &b }}

// readEarly returns what the app has already written on c, without
// waiting (most clients speak first, right after connect): it rides with
// the CONNECT (hbone.ConnectRequest.EarlyData) and saves the app a round
// trip between the ztunnels. Nothing, or an error, is left to the copy.
func readEarly(c *net.TCPConn, buf []byte) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	n := 0
	rc.Read(func(fd uintptr) bool {
		if m, err := unix.Read(int(fd), buf); err == nil && m > 0 {
			n = m
		}
		return true // one look, never wait
	})
	return buf[:n]
}

// connect decides how src→dst leaves the pod and opens that upstream,
// with early (the app's first bytes, possibly none) sent ahead. On failure
// it has already recorded the connection. With join, an HBONE tunnel is
// returned joined (hbone.ConnectRequest.Join), before the peer answered:
// by then everything this side decides (the plan, a hold for an unknown
// address) is done, and the peer's answer only allows or refuses. A
// caller that must report the answer itself (SOCKS5) waits for it.
func (p *Proxy) connect(pd *pod, src, dst netip.AddrPort, early []byte, join bool) (net.Conn, *telemetry.Conn, error) {
	start := time.Now()
	snap := p.cfg.State.Snapshot()
	rr := p.rr.Add(1)
	srcW, plan, perr := p.plan(snap, src, dst, rr)
	if errors.Is(perr, ErrUnknownInMesh) {
		snap, srcW, plan, perr = p.holdUnknown(pd, src, dst, rr)
	}
	if perr == nil && plan.Route == Passthrough {
		if dstAddr := (state.NetAddr{Network: p.cfg.Network, Addr: dst.Addr()}); snap.InMeshRange(dstAddr) {
			p.log.Info("plaintext passthrough into the mesh's address ranges", "src.workload", pd.String(),
				"dst.addr", dst.String(), "reason", passthroughReason(plan))
		}
	}

	ci := telemetry.ConnInfo{
		Direction: telemetry.Outbound,
		Src:       p.localPeer(pd, srcW, src),
		Dst:       destPeer(plan, dst),
		Secure:    plan.Route != Passthrough,
		Start:     start,
	}
	if plan.Route != Passthrough {
		ci.Dst.Addr, ci.HBONETarget = plan.Dial, plan.Target
	}
	tel := p.cfg.Telemetry.Open(ci)
	if perr != nil {
		tel.Close(p.rejectResult(rejectOutbound, telemetry.Result{Err: perr, Flags: flagFor(perr)}))
		return nil, nil, perr
	}
	ctx, cancel := context.WithTimeout(pd.ctx, ConnectTimeout)
	defer cancel()
	var up net.Conn
	var err error
	switch plan.Route {
	case Passthrough:
		if up, err = pd.netns.Dial(ctx, plan.Dial); err == nil && len(early) > 0 {
			if _, err = up.Write(early); err != nil {
				up.Close()
			}
		}
	default:
		req := &hbone.ConnectRequest{Target: plan.Target, Source: src, EarlyData: early, Join: join}
		if plan.Service != nil {
			req.Host = plan.Service.Hostname
		}
		up, err = pd.pool.Connect(ctx, hbone.Key{SrcWorkload: pd.uid, SrcID: pd.id, DstID: plan.Identity, Dst: plan.Dial}, req)
	}
	if err != nil {
		tel.Close(telemetry.Result{Err: err, Flags: flagFor(err)})
		return nil, nil, err
	}
	return up, tel, nil
}

// plan runs the outbound decision on snap.
func (p *Proxy) plan(snap *state.Snapshot, src, dst netip.AddrPort, rr uint64) (*state.Workload, Plan, error) {
	srcW := snap.WorkloadByAddr(state.NetAddr{Network: p.cfg.Network, Addr: src.Addr()})
	plan, err := PlanOutbound(snap, Source{Workload: srcW, Network: p.cfg.Network, Node: p.cfg.Node}, dst, rr)
	return srcW, plan, err
}

// maxHeld bounds the outbound connections of the node waiting for an
// unknown address at once: past it they are refused at once, so a pod
// cannot make ztunnel hold an unbounded number of them.
const maxHeld = 1024

// holdUnknown waits, for up to HoldUnknown, for dst (in the mesh's ranges
// but not in the state) to arrive, asking the control plane for it, and
// plans again at every change of the state. If it does not arrive the
// connection is refused: plaintext to what may be a mesh pod is never the
// fallback.
func (p *Proxy) holdUnknown(pd *pod, src, dst netip.AddrPort, rr uint64) (*state.Snapshot, *state.Workload, Plan, error) {
	addr := state.NetAddr{Network: p.cfg.Network, Addr: dst.Addr()}
	if p.held.Add(1) > maxHeld {
		p.held.Add(-1)
		snap := p.cfg.State.Snapshot()
		srcW, plan, err := p.plan(snap, src, dst, rr)
		p.log.Warn("outbound connection refused", "src.workload", pd.String(), "dst.addr", dst.String(),
			"reason", "too many connections waiting for unknown addresses")
		return snap, srcW, plan, err
	}
	defer p.held.Add(-1)
	if p.cfg.Demand != nil {
		defer p.cfg.Demand.DemandAddress(addr)()
	}
	timer := time.NewTimer(p.cfg.HoldUnknown)
	defer timer.Stop()
	for {
		changed := p.cfg.State.Changed()
		snap := p.cfg.State.Snapshot()
		srcW, plan, err := p.plan(snap, src, dst, rr)
		if !errors.Is(err, ErrUnknownInMesh) {
			return snap, srcW, plan, err
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
			p.log.Warn("outbound connection refused", "src.workload", pd.String(), "dst.addr", dst.String(),
				"reason", "destination in the mesh's address ranges still unknown after "+p.cfg.HoldUnknown.String())
		case <-pd.ctx.Done():
		}
		return snap, srcW, plan, err
	}
}

// passthroughReason says why a destination in the mesh's ranges gets
// plaintext.
func passthroughReason(plan Plan) string {
	switch {
	case plan.Service != nil && plan.Workload == nil:
		return "service load balancing is passthrough"
	case plan.Workload != nil:
		return "destination workload is not captured (no HBONE)"
	}
	return "destination is not in the mesh"
}

// localPeer describes a pod of this node; w is its state entry, if any.
func (p *Proxy) localPeer(pd *pod, w *state.Workload, addr netip.AddrPort) telemetry.Peer {
	peer := telemetry.Peer{Addr: addr, Pod: pd.name, Namespace: pd.namespace, Identity: pd.id.String()}
	if w != nil {
		peer.Workload, peer.CanonicalName, peer.CanonicalRevision, peer.Cluster =
			w.WorkloadName, w.CanonicalName, w.CanonicalRevision, w.ClusterID
	}
	return peer
}

func destPeer(plan Plan, dst netip.AddrPort) telemetry.Peer {
	peer := workloadPeer(plan.Workload, dst)
	if !plan.Identity.IsZero() {
		peer.Identity = plan.Identity.String()
	}
	if s := plan.Service; s != nil {
		peer.Service, peer.ServiceName, peer.ServiceNamespace = s.Hostname, s.Name, s.Namespace
	}
	return peer
}

func workloadPeer(w *state.Workload, addr netip.AddrPort) telemetry.Peer {
	peer := telemetry.Peer{Addr: addr}
	if w != nil {
		peer.Pod, peer.Workload, peer.Namespace = w.Name, w.WorkloadName, w.Namespace
		peer.CanonicalName, peer.CanonicalRevision, peer.Cluster = w.CanonicalName, w.CanonicalRevision, w.ClusterID
		if !w.Identity.IsZero() {
			peer.Identity = w.Identity.String()
		}
	}
	return peer
}

// flagFor maps a failure to Envoy/Istio response flags.
func flagFor(err error) string {
	var se *hbone.StatusError
	var pm *identity.PeerMismatchError
	var te *tls.CertificateVerificationError
	switch {
	case errors.As(err, &se) && se.Status == 401:
		return telemetry.FlagDenied
	case errors.Is(err, identity.ErrNoIdentity):
		return telemetry.FlagIdentityError
	case errors.As(err, &pm), errors.As(err, &te):
		return telemetry.FlagTLSFailure
	}
	return telemetry.FlagConnectFailure
}

// ignoreClosed drops the errors a normal end of a proxied connection
// produces (the other side closed first).
func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
