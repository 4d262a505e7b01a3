package proxy

import (
	"bytes"
	"context"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// mirror sends copies of the request to the route's mirror clusters,
// each with its probability, without waiting for them: a mirror's
// answer, failure or slowness never reaches the client. At most
// MaxMirrors copies are in flight (more are dropped), and only a request
// whose body is known and small is copied, so mirroring holds bounded
// memory.
func (x *exchange) mirror(ms []route.Mirror) {
	if len(ms) == 0 {
		return
	}
	var chosen []route.Mirror
	for _, m := range ms {
		if mrand.Uint32N(1_000_000) < m.PartsPerMillion {
			chosen = append(chosen, m)
		}
	}
	if len(chosen) == 0 {
		return
	}
	r := x.r
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength <= 0 || r.ContentLength > x.p.bounds.MaxMirrorBody {
			return
		}
		b := make([]byte, r.ContentLength)
		n, err := io.ReadFull(r.Body, b)
		body = b[:n]
		// The upstream gets what was read, then whatever follows.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		if err != nil {
			return
		}
	}
	h := r.Header.Clone()
	x.d.RequestHeaders.Apply(h)
	host := shadowHost(x.d.Authority)
	timeout := x.timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	for _, m := range chosen {
		select {
		case x.p.mirrors <- struct{}{}:
		default:
			x.p.log.Debug("mirror dropped", "cluster", m.Cluster, "reason", "too many mirrored requests in flight")
			continue
		}
		go func() {
			defer func() { <-x.p.mirrors }()
			x.p.sendMirror(x, m.Cluster, r.Method, x.d.Path, host, h.Clone(), body, timeout)
		}()
	}
}

func (p *Proxy) sendMirror(x *exchange, cluster, method, path, host string, h http.Header, body []byte, timeout time.Duration) {
	c := x.st.snap.Clusters[cluster]
	if c == nil {
		return
	}
	uh, ok := x.st.pick(cluster, upstream.PickRequest{Random: mrand.Uint64()})
	if !ok {
		return
	}
	uh.Begin()
	defer uh.End()
	ep := uh.Endpoint
	cp, err := p.up.get(poolKey{cluster: cluster, endpoint: ep.Addr, identity: ep.Identity, client: x.t.client.Addr(), h2: x.upstreamH2(c)}, ep, c)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ep.Addr.String(), bytes.NewReader(body))
	if err != nil {
		return
	}
	req.URL.Opaque, req.URL.RawQuery, _ = strings.Cut(path, "?")
	if len(body) == 0 {
		req.Body = http.NoBody
	}
	req.Host = host
	req.Header = h
	res, err := cp.roundTrip(&attempt{req: req, maxPerConn: c.HTTP.MaxRequestsPerConnection})
	if err != nil {
		p.log.Debug("mirror failed", "cluster", cluster, "dst.addr", ep.Addr.String(), "reason", err.Error())
		return
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
}

// shadowHost is Envoy's mirror authority: "-shadow" after the host,
// before any port.
func shadowHost(authority string) string {
	host, port, err := net.SplitHostPort(authority)
	if err != nil || strings.HasPrefix(host, "[") || strings.Contains(host, ":") {
		if err == nil {
			return authority
		}
		return authority + "-shadow"
	}
	return net.JoinHostPort(host+"-shadow", port)
}
