package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// inboundHBONE terminates mutual TLS on the pod's 15008 with the pod's own
// certificate and serves the CONNECT streams inside.
func (p *Proxy) inboundHBONE(pd *pod, c net.Conn) {
	tc := tls.Server(hbone.BatchWrites(c), identity.ServerTLS(p.cfg.Certs, pd.id, nil))
	if err := pd.hbone.ServeConn(pd.ctx, tc); err != nil {
		p.log.Debug("hbone connection ended", "pod", pd.String(), "src.addr", c.RemoteAddr().String(), "error", err.Error())
	}
}

// inboundHandler serves one CONNECT: the authority must be this pod, the
// policy must allow the peer, then the app is dialled from the original
// client address and the stream joined to it.
func (p *Proxy) inboundHandler(pd *pod) hbone.Handler {
	return func(ctx context.Context, req *hbone.Request, s *hbone.Stream) {
		start := time.Now()
		target := unmapped(req.Target)
		if !pd.hasIP(target.Addr()) {
			s.RespondError(http.StatusBadRequest, fmt.Sprintf("authority %s is not this pod's address", target))
			return
		}
		src := unmapped(req.Source)
		if !src.IsValid() {
			// Our clients dial from the source pod's own netns: the tunnel's
			// peer address is the client pod's.
			if ta, ok := req.RemoteAddr.(*net.TCPAddr); ok {
				src = netip.AddrPortFrom(ta.AddrPort().Addr().Unmap(), 0)
			}
		}
		c := authz.Conn{Src: src, Dst: target, Peer: req.Peer}
		p.serveInbound(pd, s, c, req.Host, true, start, func(status int, reason string) {
			if status == http.StatusOK {
				s.Respond(status)
			} else {
				s.RespondError(status, reason)
			}
		})
	}
}

// serveInbound authorizes c and, if allowed, joins down (the client side:
// an HBONE stream or a plaintext socket) with a fresh connection to the app.
// host is the service hostname the client addressed (Forwarded host=), if
// it said. answer reports the outcome to an HBONE client (nil for
// plaintext).
func (p *Proxy) serveInbound(pd *pod, down net.Conn, c authz.Conn, host string, secure bool, start time.Time, answer func(status int, reason string)) {
	snap := p.cfg.State.Snapshot()
	v := AuthorizeInbound(snap, p.cfg.Network, c)
	srcW := snap.WorkloadByAddr(state.NetAddr{Network: p.cfg.Network, Addr: c.Src.Addr()})
	srcPeer := workloadPeer(srcW, c.Src)
	srcPeer.Identity = ""
	if !c.Peer.IsZero() {
		srcPeer.Identity = c.Peer.String()
	}
	dstPeer := p.localPeer(pd, v.Workload, c.Dst)
	if svc := servedService(snap, v.Workload, host); svc != nil {
		dstPeer.Service, dstPeer.ServiceName, dstPeer.ServiceNamespace = svc.Hostname, svc.Name, svc.Namespace
	}
	tel := p.cfg.Telemetry.Open(telemetry.ConnInfo{Direction: telemetry.Inbound, Src: srcPeer, Dst: dstPeer, Secure: secure, Start: start})
	if len(v.DryRun) > 0 {
		p.log.Info("dry-run policy result", "dst.workload", pd.String(), "src.addr", c.Src.String(), "src.identity", srcPeer.Identity, "policies", v.DryRun)
	}
	if !v.Allowed {
		answer(http.StatusUnauthorized, v.Reason)
		tel.Close(withPolicy(telemetry.Result{Err: errDenied, Reason: v.Reason, Flags: telemetry.FlagDenied}, v.Policy))
		return
	}
	ctx, cancel := context.WithTimeout(pd.ctx, ConnectTimeout)
	app, err := p.dialApp(ctx, pd, c.Src.Addr(), c.Dst)
	cancel()
	if err != nil {
		answer(http.StatusServiceUnavailable, "upstream connect failed: "+err.Error())
		tel.Close(telemetry.Result{Err: err, Flags: telemetry.FlagConnectFailure})
		return
	}
	defer app.Close()
	live := p.admit(pd, snap, c, v, down, app)
	defer pd.forget(live)
	answer(http.StatusOK, "")
	sent, recv, err := hbone.Join(down, app)
	tel.Close(live.result(sent, recv, ignoreClosed(err)))
}

var errDenied = errors.New("denied by policy")

// dialApp connects to the app in the pod from the original client address,
// so the app sees its real caller. A client address the pod cannot spoof
// (its own, or none) falls back to an ordinary marked dial.
func (p *Proxy) dialApp(ctx context.Context, pd *pod, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if !src.IsValid() || pd.hasIP(src) || src.IsLoopback() || src.Is4() != dst.Addr().Is4() {
		return pd.netns.Dial(ctx, dst)
	}
	return pd.netns.DialTransparent(ctx, src, dst, pd.maps)
}

// servedService is the service named host that w backs. The name comes
// from the client, so it counts only if w is one of its endpoints.
func servedService(snap *state.Snapshot, w *state.Workload, host string) *state.Service {
	if host == "" || w == nil {
		return nil
	}
	for _, svc := range snap.ServicesByHostname(host) {
		if _, ok := w.Services[svc.Key()]; ok {
			return svc
		}
	}
	return nil
}
