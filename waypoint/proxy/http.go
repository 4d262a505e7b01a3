package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/http/httpguts"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/filter/jwt"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// Envoy's local replies, word for word.
const (
	bodyNoHealthyUpstream = "no healthy upstream"
	bodyConnectFailure    = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	bodyConnectTerminated = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	bodyOverflow          = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
	bodyTimeout           = "upstream request timeout"
)

// Envoy's response flags.
const (
	flagNoRoute         = "NR"
	flagNoHealthy       = "UH"
	flagConnectFailure  = "UF"
	flagUpstreamReset   = "UC"
	flagOverflow        = "UO"
	flagTimeout         = "UT"
	flagNoCluster       = "NC"
	flagDownstreamReset = "DC"
)

// exchange is one request on its way through the pipeline.
type exchange struct {
	p     *Proxy
	t     *tunnel
	st    *state
	w     *respWriter // &rw
	rw    respWriter
	r     *http.Request
	rreq  route.Request
	rec   telemetry.Record
	flags []string

	// Set once routed to an endpoint.
	d       route.Decision
	cluster *upstream.Cluster
	host    *upstream.Host
	ep      upstream.Endpoint
	// setCookie is a generated hash-policy cookie the response carries.
	setCookie string
	pool      *connPool
	timeout   time.Duration
	cors      *route.CORSPolicy
	retry     *route.RetryPolicy
	// upCtx is the upstream request's context; its cause tells a route
	// timeout.
	upCtx context.Context

	// adm is the cluster's circuit breakers; attempts counts the
	// attempts sent.
	adm      *upstream.Admission
	attempts int
	// h2 says the request goes upstream as HTTP/2, decided once.
	h2 bool
	// grpc: an HTTP/2 request with gRPC's content type, answered
	// locally in gRPC's terms.
	grpc bool
	// upgrading: an HTTP/1 request with an Upgrade header, as it came
	// (the forwarded request's hop-by-hop headers are removed from the
	// same map while mirrors may still be deciding their protocol).
	upgrading bool
	// lean: the request is exchanged by exchangeUpstream, not Proxy.rp.
	lean bool
	// outURL is the upstream request's URL.
	outURL url.URL
}

type exchangeKey struct{}

func (x *exchange) flag(f string) { x.flags = append(x.flags, f) }

// ServeHTTP runs the pipeline for one request: filters, routing, then a
// local reply or the upstream exchange; one telemetry record at the end.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := tunnelFrom(r.Context())
	if t == nil {
		http.Error(w, "", http.StatusInternalServerError)
		return
	}
	x := &exchange{p: p, t: t, r: r}
	x.rw.ResponseWriter = w
	x.w = &x.rw
	x.upgrading = r.ProtoMajor == 1 && r.Header.Get("Upgrade") != ""
	// gRPC exists over HTTP/2 only. Envoy's test is the content type, and
	// application/grpc-web is not gRPC by it.
	x.grpc = r.ProtoMajor == 2 && isGRPC(r.Header)
	x.rec = telemetry.Record{
		Start:     time.Now(),
		Protocol:  r.Proto,
		Method:    r.Method,
		Path:      r.RequestURI,
		Authority: r.Host,
		UserAgent: r.UserAgent(),
		Source:    p.sourcePeer(t),
	}
	if r.ProtoMajor == 2 {
		x.rec.Protocol = "HTTP/2"
	}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		r.Body = body
	}
	defer func() {
		if body != nil {
			x.rec.BytesReceived = body.n.Load()
		}
		x.finish()
		if v := recover(); v != nil {
			panic(v)
		}
	}()

	if r.Header.Get("X-Request-Id") == "" {
		r.Header["X-Request-Id"] = newRequestID()
	}
	x.rec.RequestID = r.Header.Get("X-Request-Id")

	if up := upgrade(r.Header); up != "" && !strings.EqualFold(up, "websocket") {
		// Only WebSocket upgrades pass (Istio's upgrade_configs). An h2c
		// upgrade in particular would turn the connection into a raw
		// tunnel to the app, its later requests never routed or
		// authorized here; Envoy refuses an upgrade it is not
		// configured for with 403 as well.
		x.localReply(http.StatusForbidden, "", "")
		return
	}

	x.st = p.state.Load()
	ch := x.st.snap.Chains[t.dst]
	if ch == nil {
		// The destination left the configuration while this connection
		// was open: nothing routes it any more.
		x.w.Header().Set("Connection", "close")
		x.localReply(http.StatusNotFound, "", flagNoRoute)
		return
	}
	target := r.RequestURI
	if target == "" || (target[0] != '/' && target != "*") {
		// An absolute-form target ("GET http://host/path"): its path.
		target = r.URL.RequestURI()
	}
	rreq := route.Request{
		Authority: r.Host,
		Method:    r.Method,
		Path:      normalizePath(target),
		Header:    r.Header,
		Random:    mrand.Uint64(),
		// The tunnel's proven identity, never a header: routes for one
		// namespace's clients match on it.
		PeerPrincipal: x.t.principal,
	}
	// The route is decided before the filters run (a pure decision: the
	// filters do not change what it reads), because a route's own fault
	// configuration replaces the fault filter's, as Envoy's per-route
	// filter config does; it is acted on only after every filter let the
	// request through, so a denial comes before "no route".
	table := x.st.snap.Routes[ch.RouteConfig]
	if table != nil {
		x.d = route.Decide(table, rreq)
	}
	var routeFault *fault.Fault
	if x.d.Route != nil {
		routeFault, _ = x.d.Route.Fault.(*fault.Fault)
		// Envoy picks the route before its filters run, so a request a
		// filter answers still names its route.
		x.rec.RouteName = x.d.Route.Name
	}
	if !x.runFilters(ch, &rreq, routeFault) {
		return
	}
	if table == nil {
		x.localReply(http.StatusNotFound, "", flagNoRoute)
		return
	}
	x.rreq = rreq
	if x.d.Action == route.ActionNone {
		x.localReply(http.StatusNotFound, "", flagNoRoute)
		return
	}
	cors := x.d.Route.CORS
	if cors != nil && x.preflight(cors) {
		return
	}
	switch x.d.Action {
	case route.ActionRedirect:
		x.d.ResponseHeaders.Apply(x.w.Header())
		x.addCORS(cors)
		x.w.Header().Set("Location", x.d.Location)
		x.localReply(x.d.Status, "", "")
	case route.ActionDirectResponse:
		x.d.ResponseHeaders.Apply(x.w.Header())
		x.addCORS(cors)
		x.localReply(x.d.Status, x.d.Route.Direct.Body, "")
	case route.ActionForward:
		x.forward(cors)
	}
}

// runFilters runs the chain's HTTP filters in order; false when one
// answered the request. routeFault, when set, is the decided route's own
// fault, which the chain's fault filter applies instead of its own.
func (x *exchange) runFilters(ch *config.Chain, rreq *route.Request, routeFault *fault.Fault) bool {
	// What a JWT filter verified, for the RBAC filters after it.
	var authn jwt.Result
	for i := range ch.HTTPFilters {
		f := &ch.HTTPFilters[i]
		if f.Fault != nil && routeFault != nil {
			g := *f
			g.Fault = routeFault
			f = &g
		}
		switch {
		case f.JWT != nil:
			res, ok := x.verifyJWT(f.JWT, rreq)
			if !ok {
				return false
			}
			if res.Principal != "" || len(res.Claims) > 0 {
				authn = res
			}
		case f.RBAC != nil:
			rr := &rbac.Request{
				HTTP:             *rreq,
				Principal:        x.t.principal,
				DirectRemoteIP:   x.t.client.Addr(),
				RemoteIP:         x.t.client.Addr(),
				DestinationIP:    x.t.dst.Addr(),
				DestinationPort:  x.t.dst.Port(),
				RequestPrincipal: authn.Principal,
			}
			for _, c := range authn.Claims {
				rr.Claims = append(rr.Claims, rbac.Claim{Path: c.Path, Values: c.Values})
			}
			d := rbac.Evaluate(f.RBAC, rr)
			if d.Policy != "" {
				x.rec.PolicyName = d.Policy
			}
			if !d.Allowed {
				x.localReply(rbac.DeniedStatus, rbac.DeniedBody, rbac.DeniedFlag)
				return false
			}
		case f.Fault != nil:
			if !f.Fault.Applies(rreq) {
				continue
			}
			delay, abort := fault.Decide(f.Fault, mrand.Uint64(), mrand.Uint64())
			if delay <= 0 && abort == nil {
				continue
			}
			if active := x.st.activeFaults[f.Fault]; active != nil {
				// max_active_faults: beyond it the request goes
				// unharmed; a fault counts while it delays or
				// aborts.
				if active.Add(1) > int64(f.Fault.MaxActiveFaults) {
					active.Add(-1)
					continue
				}
				defer active.Add(-1)
			}
			if delay > 0 {
				x.flag(fault.FlagDelay)
				tm := time.NewTimer(delay)
				select {
				case <-tm.C:
				case <-x.r.Context().Done():
					tm.Stop()
					x.flag(flagDownstreamReset)
					return false
				}
			}
			if abort != nil {
				if abort.GRPC {
					// Envoy's gRPC abort: 200 with that grpc-status.
					x.reply(http.StatusOK, fault.AbortBody, fault.FlagAbort, int(abort.GRPCStatus))
				} else {
					x.localReply(abort.HTTPStatus, fault.AbortBody, fault.FlagAbort)
				}
				return false
			}
		}
	}
	return true
}

// verifyJWT runs a JWT filter: a token that fails is answered as Envoy
// does (401, or 403 for an audience, with its reason as the body); a
// request that passes gets the filter's header changes.
func (x *exchange) verifyJWT(f *jwt.Filter, rreq *route.Request) (jwt.Result, bool) {
	path := rreq.Path
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	res := jwt.Decide(f, &jwt.Request{Method: rreq.Method, Path: rreq.Path, Header: x.r.Header, URL: "http://" + rreq.Authority + path}, time.Now())
	if res.Status != jwt.OK {
		x.w.Header().Set("Www-Authenticate", res.WWWAuthenticate)
		x.localReply(res.Status.Code(), res.Status.String(), "")
		return res, false
	}
	for _, h := range res.RemoveHeaders {
		x.r.Header.Del(h)
	}
	for _, kv := range res.SetHeaders {
		x.r.Header.Set(kv[0], kv[1])
	}
	return res, true
}

// forward sends the request to an endpoint of the decided cluster.
func (x *exchange) forward(cors *route.CORSPolicy) {
	p := x.p
	x.rec.UpstreamCluster = x.d.Cluster
	x.cluster = x.st.snap.Clusters[x.d.Cluster]
	if x.cluster == nil {
		x.localReply(http.StatusServiceUnavailable, "", flagNoCluster)
		return
	}
	if len(x.cluster.Services) > 0 {
		s := x.cluster.Services[0]
		x.rec.DestinationService, x.rec.DestinationServiceName, x.rec.DestinationServiceNamespace = s.Host, s.Name, s.Namespace
	}
	pr := upstream.PickRequest{Random: mrand.Uint64()}
	if f := x.d.Route.Forward; f != nil && len(f.HashPolicies) > 0 {
		pr.Hash, pr.HasHash, x.setCookie = route.RequestHash(f.HashPolicies, &x.rreq, x.t.client.Addr())
	}
	host, ok := x.st.pick(x.d.Cluster, pr)
	if !ok {
		x.localReply(http.StatusServiceUnavailable, bodyNoHealthyUpstream, flagNoHealthy)
		return
	}
	host.Begin()
	// A retry may move the request to another host: end whichever holds
	// it last.
	defer func() { x.host.End() }()
	x.host = host
	ep := host.Endpoint
	x.ep = ep
	x.rec.UpstreamHost = ep.Addr
	x.rec.Destination = destinationPeer(ep)
	x.h2 = x.upstreamH2(x.cluster)
	key := poolKey{cluster: x.d.Cluster, endpoint: ep.Addr, identity: ep.Identity, client: x.t.client.Addr(), h2: x.h2}
	cp, err := p.up.get(key, ep, x.cluster)
	if err != nil {
		x.overflow()
		return
	}
	x.pool = cp
	x.adm = x.st.admissions[x.d.Cluster]
	if x.d.Route.Forward != nil {
		x.timeout = x.d.Route.Forward.Timeout
		x.retry = x.d.Route.Forward.Retry
		x.mirror(x.d.Route.Forward.Mirrors)
	}
	ctx := x.r.Context()
	var cancel context.CancelFunc
	if x.timeout > 0 {
		ctx, cancel = context.WithTimeoutCause(ctx, x.timeout, errRouteTimeout)
		defer cancel()
	}
	x.cors = cors
	x.upCtx = ctx
	if upgrade(x.r.Header) == "" {
		x.lean = true
		x.exchangeUpstream(ctx)
		return
	}
	r := x.r.WithContext(context.WithValue(ctx, exchangeKey{}, x))
	// Without a parsable RemoteAddr the reverse proxy leaves
	// X-Forwarded-For as the client sent it, as Envoy does without
	// use_remote_address.
	r.RemoteAddr = ""
	p.rp.ServeHTTP(x.w, r)
}

// timedOut says whether the route timeout ended the upstream request.
func (x *exchange) timedOut() bool {
	return x.upCtx != nil && errors.Is(context.Cause(x.upCtx), errRouteTimeout)
}

var errRouteTimeout = errors.New("route timeout")

// upstreamH2 says whether the request goes upstream as HTTP/2: the
// cluster's protocol, the request's own for use_downstream_protocol_config.
// An Upgrade (WebSocket) always goes as HTTP/1.1, the only version it
// exists in here.
func (x *exchange) upstreamH2(c *upstream.Cluster) bool {
	if x.upgrading {
		return false
	}
	switch c.HTTP.Protocol {
	case upstream.HTTP2:
		return true
	case upstream.Downstream:
		return x.r.ProtoMajor == 2
	}
	return false
}

// finish fills what the response told and hands the record over.
func (x *exchange) finish() {
	x.rec.Duration = time.Since(x.rec.Start)
	x.rec.ResponseCode = x.w.code
	x.rec.BytesSent = x.w.n
	if x.timedOut() && !slices.Contains(x.flags, flagTimeout) {
		// The timeout struck after the response began: the stream was
		// reset mid-body.
		x.flag(flagTimeout)
	}
	if x.w.code == 0 && x.r.Context().Err() != nil && !slices.Contains(x.flags, flagDownstreamReset) {
		x.flag(flagDownstreamReset)
	}
	if len(x.flags) == 0 {
		x.rec.ResponseFlags = "-"
	} else {
		x.rec.ResponseFlags = strings.Join(x.flags, ",")
	}
	h := x.w.Header()
	if v := h.Get("Grpc-Status"); v != "" {
		x.rec.GRPCStatus = v
	} else if v := h.Get(http.TrailerPrefix + "Grpc-Status"); v != "" {
		x.rec.GRPCStatus = v
	}
	x.p.obs.Observe(&x.rec)
}

// newReverseProxy returns the proxy's one reverse proxy, which carries the
// requests that ask for an upgrade (WebSocket) and joins the upgraded
// connections; the exchange in the request's context says where each
// request goes. Every other request goes by exchangeUpstream.
func newReverseProxy(p *Proxy) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Director: func(out *http.Request) {
			out.Context().Value(exchangeKey{}).(*exchange).prepare(out)
		},
		Transport:     roundTripper{},
		FlushInterval: -1,
		// Without a pool the reverse proxy allocates 32 KiB per response.
		BufferPool: copyBuffers{},
		ErrorLog:   slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ModifyResponse: func(res *http.Response) error {
			x := res.Request.Context().Value(exchangeKey{}).(*exchange)
			if res.StatusCode == http.StatusSwitchingProtocols {
				// The reverse proxy writes a 101 on the hijacked
				// connection itself, never through respWriter.
				x.w.code = http.StatusSwitchingProtocols
			}
			x.modifyResponse(res)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			x := r.Context().Value(exchangeKey{}).(*exchange)
			x.upstreamError(err)
		},
	}
}

// prepare makes the upstream request of out, a copy of the client's
// request: the endpoint, the decided path and authority, the route's
// header changes.
func (x *exchange) prepare(out *http.Request) {
	out.URL.Scheme = "http"
	out.URL.Host = x.pool.host
	// RawPath is dropped with Path: the decided path is sent as the
	// client encoded it.
	out.URL.Path, out.URL.RawPath, out.URL.RawQuery = "", "", ""
	out.URL.Opaque = x.d.Path
	if i := strings.IndexByte(x.d.Path, '?'); i >= 0 {
		out.URL.Opaque, out.URL.RawQuery = x.d.Path[:i], x.d.Path[i+1:]
	}
	out.Host = x.d.Authority
	x.d.RequestHeaders.Apply(out.Header)
	if x.d.VirtualHost != nil && x.d.VirtualHost.IncludeRequestAttemptCount {
		out.Header.Set("X-Envoy-Attempt-Count", "1")
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// Not net/http's default: the request had none.
		out.Header["User-Agent"] = nil
	}
}

// modifyResponse applies the route's response header changes, CORS and
// a hash policy's cookie to the endpoint's response.
func (x *exchange) modifyResponse(res *http.Response) {
	trailersOnly(res)
	x.d.ResponseHeaders.Apply(res.Header)
	x.addCORSTo(res.Header, x.cors)
	if x.setCookie != "" {
		res.Header.Add("Set-Cookie", x.setCookie)
	}
}

// upstreamError answers a request whose upstream exchange failed before
// the response headers.
func (x *exchange) upstreamError(err error) {
	var ce *connectError
	switch {
	case x.r.Context().Err() != nil:
		// The client went away; there is nobody to answer.
		x.flag(flagDownstreamReset)
		x.w.code = 0
	case x.timedOut():
		x.localReply(http.StatusGatewayTimeout, bodyTimeout, flagTimeout)
	case errors.Is(err, errNoHealthyRetry):
		x.localReply(http.StatusServiceUnavailable, bodyNoHealthyUpstream, flagNoHealthy)
	case errors.Is(err, errOverflow), errors.Is(err, errNotNeeded):
		// errNotNeeded: a dial shared by several requests (HTTP/2)
		// waited for a connection slot and gave up with the request
		// it was made for; the others were waiting for the same slot.
		x.overflow()
	case errors.As(err, &ce):
		x.p.log.Debug("upstream connect failed", "dst.addr", x.ep.Addr.String(), "dst.identity", x.ep.Identity, "reason", ce.err.Error())
		x.localReply(http.StatusServiceUnavailable, bodyConnectFailure, flagConnectFailure)
	case errors.Is(err, context.DeadlineExceeded):
		// A retry policy's per-try timeout ended the last attempt.
		x.localReply(http.StatusGatewayTimeout, bodyTimeout, flagTimeout)
	default:
		x.p.log.Debug("upstream request failed", "dst.addr", x.ep.Addr.String(), "reason", err.Error())
		x.localReply(http.StatusServiceUnavailable, bodyConnectTerminated, flagUpstreamReset)
	}
}

type roundTripper struct{}

func (roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	return x.roundTripRetrying(r)
}

// respWriter records the status and body bytes sent to the client.
type respWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (w *respWriter) WriteHeader(code int) {
	if w.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read. The HTTP/1 transport
// may still be writing the body when the response is back, hence atomic.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// newRequestID returns a random (version 4) UUID as a header value. The
// value's bytes and the one-element slice holding it are one allocation;
// the bytes are never written after the string is made.
func newRequestID() []string {
	id := new(struct {
		v [1]string
		b [36]byte
	})
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	b := id.b[:]
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	id.v[0] = unsafe.String(&id.b[0], len(id.b))
	return id.v[:]
}

// copyBuffers lends the reverse proxy its body copy buffers.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte { return *copyBufferPool.Get().(*[]byte) }

func (copyBuffers) Put(b []byte) {
	if cap(b) == 32<<10 {
		b = b[:cap(b)]
		copyBufferPool.Put(&b)
	}
}

// upgrade returns the protocol an HTTP/1.1 request asks to upgrade to,
// "" when it asks for none.
func upgrade(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
