package proxy

import (
	"context"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// serveTCP forwards a tunnel's bytes to an endpoint of the chain's TCP
// cluster. For a TCP chain the CONNECT is still unanswered (sniffed is
// nil): the endpoint is dialled first, so a client whose destination has
// no reachable endpoint sees its connection refused. A sniffed tunnel was
// answered already; sniffed holds the bytes read while deciding. Before
// either, the chain's TCP filters decide whether the tunnel may pass.
func (p *Proxy) serveTCP(ctx context.Context, st *state, ch *config.Chain, t *tunnel, s *hbone.Stream, sniffed *peekConn) {
	rec := telemetry.Record{
		Start:           t.start,
		Protocol:        "TCP",
		UpstreamCluster: ch.TCPCluster,
		ResponseFlags:   "-",
		Source:          p.sourcePeer(t),
	}
	defer func() {
		rec.Duration = time.Since(rec.Start)
		p.obs.Observe(&rec)
	}()
	refuse := func(flag, reason string) {
		rec.ResponseFlags = flag
		if sniffed == nil {
			s.RespondError(http.StatusServiceUnavailable, reason)
		}
	}
	c := st.snap.Clusters[ch.TCPCluster]
	if c != nil && len(c.Services) > 0 {
		rec.DestinationService, rec.DestinationServiceName, rec.DestinationServiceNamespace = c.Services[0].Host, c.Services[0].Name, c.Services[0].Namespace
	}
	if !p.authorizeTunnel(ch.TCPFilters, ch, t, &rec) {
		// Envoy's network RBAC closes a denied connection; an unanswered
		// CONNECT is refused instead, which closes the tunnel as well and
		// tells the client why. Nothing was dialled either way.
		rec.ResponseFlags = rbac.DeniedFlag
		if sniffed == nil {
			s.RespondError(rbac.DeniedStatus, rbac.DeniedBody)
		} else {
			s.Close()
		}
		return
	}
	if c == nil {
		refuse(flagNoCluster, "no cluster "+ch.TCPCluster)
		return
	}
	host, ok := st.pick(ch.TCPCluster, upstream.PickRequest{Random: mrand.Uint64()})
	if !ok {
		refuse(flagNoHealthy, bodyNoHealthyUpstream)
		return
	}
	host.Begin()
	defer host.End()
	ep := host.Endpoint
	rec.UpstreamHost = ep.Addr
	rec.Destination = destinationPeer(ep)
	// A tunnel is one upstream connection: over max_connections it is
	// refused, as Envoy's tcp_proxy refuses it, rather than queued.
	adm := st.admissions[ch.TCPCluster]
	if !adm.TryConnection() {
		refuse(flagOverflow, bodyOverflow)
		return
	}
	defer adm.ConnectionDone()
	up, err := p.up.dial(ctx, ep, t.client.Addr(), c.ConnectTimeout)
	if err != nil {
		p.log.Debug("upstream connect failed", "dst.addr", ep.Addr.String(), "dst.identity", ep.Identity, "reason", err.Error())
		if ctx.Err() == nil {
			st.report(ch.TCPCluster, host, upstream.ConnectFailed)
		}
		refuse(flagConnectFailure, "upstream connect failure")
		return
	}
	st.report(ch.TCPCluster, host, upstream.Connected)
	defer up.Close()
	var down net.Conn = s
	if sniffed != nil {
		down = sniffed
	} else if err := s.Respond(http.StatusOK); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { up.Close(); s.Close() })
	defer stop()
	defer p.track(t, false, func() { up.Close(); s.Close() })()
	rec.BytesReceived, rec.BytesSent = join(down, up)
}

// authorizeTunnel runs network RBAC filters (a chain's TCPFilters or
// ConnFilters), in order, once per tunnel and before any of its bytes are
// forwarded or served. A connection has the peer's proven identity and
// the addresses, no HTTP attributes: a matcher on those never matches
// here, as in Envoy's network filter. It records the deciding policy and
// logs the ones that asked for an audit.
func (p *Proxy) authorizeTunnel(filters []config.HTTPFilter, ch *config.Chain, t *tunnel, rec *telemetry.Record) bool {
	if len(filters) == 0 {
		return true
	}
	req := tunnelRequest(t)
	for i := range filters {
		f := &filters[i]
		if f.RBAC == nil {
			continue
		}
		d := rbac.Evaluate(f.RBAC, req)
		if d.Policy != "" {
			rec.PolicyName = d.Policy
		}
		if d.Log {
			p.log.Info("rbac audit", "policy", d.Policy, "src.identity", t.principal, "src.addr", t.client.String(), "dst.addr", t.dst.String(), "chain", ch.Name)
		}
		if !d.Allowed {
			p.log.Debug("tunnel denied", "policy", d.Policy, "src.identity", t.principal, "src.addr", t.client.String(), "dst.addr", t.dst.String(), "chain", ch.Name)
			return false
		}
	}
	return true
}

// refuseHTTPTunnel checks the network RBAC filters that head an HTTP
// chain (the policies on the waypoint as a workload) before any of the
// tunnel's HTTP is served. A denied tunnel is refused: an unanswered
// CONNECT (answered false) with 403 "RBAC: access denied", as a TCP
// chain refuses it, else (a sniffed tunnel, answered before its bytes
// were read) by closing it, as Envoy's network RBAC closes a connection.
// The access log names the deciding policy. It reports whether the
// tunnel was refused.
func (p *Proxy) refuseHTTPTunnel(ch *config.Chain, t *tunnel, s *hbone.Stream, answered bool) bool {
	if len(ch.ConnFilters) == 0 {
		return false
	}
	rec := telemetry.Record{Start: t.start, Protocol: "TCP", ResponseFlags: "-", Source: p.sourcePeer(t)}
	if p.authorizeTunnel(ch.ConnFilters, ch, t, &rec) {
		return false
	}
	rec.ResponseFlags = rbac.DeniedFlag
	if answered {
		s.Close()
	} else {
		s.RespondError(rbac.DeniedStatus, rbac.DeniedBody)
	}
	rec.Duration = time.Since(rec.Start)
	p.obs.Observe(&rec)
	return true
}

// join copies both ways until both directions ended, passing each end of
// stream on as a half-close. It returns the bytes copied a→b and b→a.
func join(a, b net.Conn) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = copyHalf(a, b)
	}()
	ab = copyHalf(b, a)
	wg.Wait()
	return ab, ba
}

func copyHalf(dst, src net.Conn) int64 {
	n, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		cw.CloseWrite()
	} else {
		dst.Close()
		src.Close()
	}
	return n
}
