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
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// serveTCP forwards a tunnel's bytes to an endpoint of the chain's TCP
// cluster. For a TCP chain the CONNECT is still unanswered (sniffed is
// nil): the endpoint is dialled first, so a client whose destination has
// no reachable endpoint sees its connection refused. A sniffed tunnel was
// answered already; sniffed holds the bytes read while deciding.
func (p *Proxy) serveTCP(ctx context.Context, st *state, ch *config.Chain, t *tunnel, s *hbone.Stream, sniffed *peekConn) {
	rec := telemetry.Record{
		Start:           t.start,
		Protocol:        "TCP",
		UpstreamCluster: ch.TCPCluster,
		ResponseFlags:   "-",
		Source:          telemetry.Peer{Principal: t.principal, Namespace: t.namespace, Addr: t.client},
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
	if c == nil {
		refuse(flagNoCluster, "no cluster "+ch.TCPCluster)
		return
	}
	if len(c.Services) > 0 {
		rec.DestinationService, rec.DestinationServiceName, rec.DestinationServiceNamespace = c.Services[0].Host, c.Services[0].Name, c.Services[0].Namespace
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
	up, err := p.up.dial(ctx, ep, t.client.Addr(), c.ConnectTimeout)
	if err != nil {
		p.log.Debug("upstream connect failed", "dst.addr", ep.Addr.String(), "dst.identity", ep.Identity, "reason", err.Error())
		refuse(flagConnectFailure, "upstream connect failure")
		return
	}
	defer up.Close()
	var down net.Conn = s
	if sniffed != nil {
		down = sniffed
	} else if err := s.Respond(http.StatusOK); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { up.Close(); s.Close() })
	defer stop()
	rec.BytesReceived, rec.BytesSent = join(down, up)
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
