package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
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

// inboundHandler serves one CONNECT: the authority must be this pod and
// not one of ztunnel's own ports, the policy must allow the peer, then the
// app is dialled from the client's address (InboundSource) and the stream
// joined to it.
func (p *Proxy) inboundHandler(pd *pod) hbone.Handler {
	return func(ctx context.Context, req *hbone.Request, s *hbone.Stream) {
		start := time.Now()
		target := unmapped(req.Target)
		if !pd.hasIP(target.Addr()) {
			p.logRejected(rejectAuthority, slog.LevelInfo, "hbone request refused", requestAttrs(pd, req, "authority is not this pod's address")...)
			s.RespondError(http.StatusBadRequest, fmt.Sprintf("authority %s is not this pod's address", target))
			return
		}
		if err := CheckDestination(target); err != nil {
			p.logRejected(rejectSelfCall, slog.LevelInfo, "hbone request refused", requestAttrs(pd, req, err.Error())...)
			s.RespondError(http.StatusBadRequest, err.Error())
			return
		}
		var tcpPeer netip.Addr
		if ta, ok := req.RemoteAddr.(*net.TCPAddr); ok {
			tcpPeer = ta.AddrPort().Addr()
		}
		snap := p.cfg.State.Snapshot()
		dstW := snap.WorkloadByAddr(state.NetAddr{Network: p.cfg.Network, Addr: target.Addr()})
		src, trust := InboundSource(snap, dstW, req.Peer, tcpPeer, req.Source)
		if trust == SourceForwardedIgnored {
			p.logRejected(rejectForwarded, slog.LevelDebug, "forwarded address ignored",
				requestAttrs(pd, req, "the peer is not the destination's waypoint")...)
		}
		c := authz.Conn{Src: src, Dst: target, Peer: req.Peer}
		p.serveInbound(ctx, pd, s, c, req.Host, true, start, func(status int, reason string) {
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
// plaintext). ctx ends when the client gives up (an HBONE stream's reset),
// which abandons the dial to the app at once.
func (p *Proxy) serveInbound(ctx context.Context, pd *pod, down net.Conn, c authz.Conn, host string, secure bool, start time.Time, answer func(status int, reason string)) {
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
		tel.Close(p.rejectResult(rejectDenied, withPolicy(telemetry.Result{Err: errDenied, Reason: v.Reason, Flags: telemetry.FlagDenied}, v.Policy)))
		return
	}
	dctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	app, err := p.dialApp(dctx, pd, c.Src.Addr(), c.Dst)
	cancel()
	if err != nil {
		answer(http.StatusServiceUnavailable, "upstream connect failed: "+err.Error())
		tel.Close(p.rejectResult(rejectUpstream, telemetry.Result{Err: err, Flags: telemetry.FlagConnectFailure}))
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

// requestAttrs describe a refused HBONE request for its log line.
func requestAttrs(pd *pod, req *hbone.Request, reason string) []slog.Attr {
	a := []slog.Attr{
		slog.String("dst.workload", pd.String()),
		slog.String("dst.addr", req.Target.String()),
		slog.String("src.identity", req.Peer.String()),
		slog.String("reason", reason),
	}
	if req.RemoteAddr != nil {
		a = append(a, slog.String("src.addr", req.RemoteAddr.String()))
	}
	if req.Source.IsValid() {
		a = append(a, slog.String("forwarded_for", req.Source.String()))
	}
	return a
}

// rejectResult is r for a refused connection: its access-log line is
// written only within the rate of its class (the metrics count them all).
// A line written after a silence says how many it stands for.
func (p *Proxy) rejectResult(key string, r telemetry.Result) telemetry.Result {
	ok, dropped := p.rejects.allow(key)
	r.Unlogged = !ok
	if ok && dropped > 0 {
		r.Reason = strings.TrimSpace(fmt.Sprintf("%s (%d similar refusals not logged)", r.Reason, dropped))
	}
	return r
}

// dialApp connects to the app in the pod from the original client address,
// so the app sees its real caller. A client address the pod cannot spoof
// (its own, or none) falls back to an ordinary marked dial.
func (p *Proxy) dialApp(ctx context.Context, pd *pod, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if err := CheckDestination(dst); err != nil {
		return nil, err
	}
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
