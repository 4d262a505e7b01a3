package proxy

import (
	"context"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/waypoint/route"
	"github.com/zmesh/zmesh/waypoint/upstream"
)

// flagRetryExhausted is Envoy's URX: the retries ran out on a retriable
// outcome.
const flagRetryExhausted = "URX"

// maxRetryBody is the largest request body kept for retries; a request
// with a longer body is sent once.
const maxRetryBody = 64 << 10

// retryable says whether an attempt's outcome meets one of the policy's
// retry_on conditions (Envoy's router semantics).
func retryable(p *route.RetryPolicy, res *http.Response, err error) bool {
	on := func(c string) bool { return slices.Contains(p.RetryOn, c) }
	if err != nil {
		if errors.Is(err, errOverflow) || errors.Is(err, errNotNeeded) {
			// A circuit breaker's refusal is never retried (Envoy's
			// rule): a retry would only add to the load it sheds.
			return false
		}
		var ce *connectError
		if errors.As(err, &ce) {
			return on("connect-failure") || on("5xx") || on("gateway-error") || on("reset") || on("reset-before-request")
		}
		if isRefusedStream(err) && on("refused-stream") {
			return true
		}
		return on("reset") || on("5xx") || on("gateway-error")
	}
	code := res.StatusCode
	switch {
	case on("5xx") && code >= 500:
		return true
	case on("gateway-error") && (code == 502 || code == 503 || code == 504):
		return true
	case on("retriable-4xx") && code == 409:
		return true
	case on("retriable-status-codes") && slices.Contains(p.RetriableStatusCodes, uint32(code)):
		return true
	}
	if gs := res.Header.Get("Grpc-Status"); gs != "" {
		switch gs {
		case "1":
			return on("cancelled")
		case "4":
			return on("deadline-exceeded")
		case "13":
			return on("internal")
		case "8":
			return on("resource-exhausted")
		case "14":
			return on("unavailable")
		}
	}
	return false
}

func isRefusedStream(err error) bool {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	var re *hbone.ResetError
	return errors.As(err, &re) && re.Code == http2.ErrCodeRefusedStream
}

// replay lets a request body be sent again by a retry, as Envoy's
// buffering does: the body streams to the first attempt while a copy of up
// to maxRetryBody bytes is kept, so a body of unknown length (a gRPC call,
// a chunked upload) is not held back until it ends. Each attempt reads its
// own view: the copy first, then the rest of the body. Once the body
// outgrows the copy the request can no longer be retried. An attempt that
// was replaced by a retry reads nothing more.
type replay struct {
	mu   sync.Mutex
	src  io.ReadCloser
	buf  []byte
	over bool  // the body outgrew maxRetryBody: no copy is kept
	done error // the body's end (io.EOF) or error, once seen
	cur  *replayView
}

// errReplaced ends the body of an attempt a retry replaced.
var errReplaced = errors.New("request body taken over by a retry")

// newReplay wraps r's body (none: nil) for retries.
func newReplay(r *http.Request) *replay {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	rp := &replay{src: r.Body}
	r.Body = rp.view()
	r.GetBody = func() (io.ReadCloser, error) { return rp.view(), nil }
	return rp
}

// retriable says whether the body can still be sent again in full.
func (rp *replay) retriable() bool {
	if rp == nil {
		return true
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return !rp.over
}

// view returns a reader of the whole body, replacing the previous one.
func (rp *replay) view() *replayView {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	v := &replayView{rp: rp}
	rp.cur = v
	return v
}

type replayView struct {
	rp  *replay
	pos int
}

// Read holds the lock while it reads the body, so that bytes an
// attempt's reader takes just as a retry replaces it are kept for the
// retry.
func (v *replayView) Read(p []byte) (int, error) {
	rp := v.rp
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.cur != v {
		return 0, errReplaced
	}
	if !rp.over && v.pos < len(rp.buf) {
		n := copy(p, rp.buf[v.pos:])
		v.pos += n
		return n, nil
	}
	if rp.done != nil {
		return 0, rp.done
	}
	n, err := rp.src.Read(p)
	if !rp.over {
		if len(rp.buf)+n > maxRetryBody {
			rp.over, rp.buf = true, nil
		} else {
			rp.buf = append(rp.buf, p[:n]...)
			v.pos += n
		}
	}
	if err != nil {
		rp.done = err
	}
	return n, err
}

// Close leaves the body open: a retry may still read it. The server
// closes it when the request ends.
func (v *replayView) Close() error { return nil }

// roundTripRetrying sends r as the route's retry policy says: each retry
// on a freshly picked endpoint (avoiding those tried when the policy asks),
// after a jittered exponential back-off, with a per-try timeout. Every
// retry takes one of the cluster's max_retries; when none is left the
// retry is not made and the last attempt's outcome stands, flagged UO.
func (x *exchange) roundTripRetrying(r *http.Request) (*http.Response, error) {
	p := x.retry
	if p == nil {
		return x.attempt(r, 0, false)
	}
	body := newReplay(r)
	tries := int(p.NumRetries) + 1
	var tried []netip.AddrPort
	for i := 0; ; i++ {
		if i > 0 {
			if err := x.backOff(r.Context(), i, p); err != nil {
				x.adm.RetryDone()
				return nil, err
			}
			if !x.repick(tried) {
				x.adm.RetryDone()
				return nil, errNoHealthyRetry
			}
			if r.GetBody != nil {
				body, _ := r.GetBody()
				r = r.Clone(r.Context())
				r.Body = body
			} else {
				r = r.Clone(r.Context())
			}
			r.URL.Host = x.pool.host
		}
		if x.d.VirtualHost != nil && x.d.VirtualHost.IncludeRequestAttemptCount {
			r.Header.Set("X-Envoy-Attempt-Count", strconv.Itoa(i+1))
		}
		tried = append(tried, x.ep.Addr)
		res, err := x.attempt(r, p.PerTryTimeout, i > 0)
		if !retryable(p, res, err) || r.Context().Err() != nil || !body.retriable() {
			return res, err
		}
		if i == tries-1 {
			x.flag(flagRetryExhausted)
			return res, err
		}
		if !x.adm.TryRetry() {
			// max_retries: the retry budget of the cluster is spent.
			x.flag(flagOverflow)
			return res, err
		}
		if res != nil {
			io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
		}
	}
}

var errNoHealthyRetry = errors.New("no healthy upstream for a retry")

// attempt sends r once on the current pool, bounded by perTry (0: none);
// the bound covers the response body too, as Envoy's per-try timeout. It
// takes one of the cluster's max_requests for the attempt's lifetime (and
// gives back the retry slot of a retry with it), and reports the outcome
// to the cluster's outlier detection.
func (x *exchange) attempt(r *http.Request, perTry time.Duration, retry bool) (*http.Response, error) {
	x.attempts++
	adm := x.adm
	if !adm.TryRequest() {
		if retry {
			adm.RetryDone()
		}
		return nil, errOverflow
	}
	a := &attempt{x: x, host: x.host, retry: retry, req: r, maxPerConn: x.cluster.HTTP.MaxRequestsPerConnection}
	if perTry > 0 {
		var ctx context.Context
		ctx, a.cancel = context.WithTimeoutCause(r.Context(), perTry, errRouteTimeout)
		a.req = r.WithContext(ctx)
	}
	res, err := x.pool.roundTrip(a)
	if err != nil {
		x.reportError(a.host, a.Context, err)
		a.end()
		return nil, err
	}
	host := a.host
	x.st.report(x.d.Cluster, host, upstream.Connected)
	// A gRPC response below 500 is judged by its grpc-status: in the
	// headers of a trailers-only response, else in the trailers.
	switch gs := res.Header.Get("Grpc-Status"); {
	case !isGRPC(res.Header) || res.StatusCode >= 500:
		x.st.report(x.d.Cluster, host, upstream.Status(res.StatusCode))
	case gs != "":
		x.st.report(x.d.Cluster, host, grpcOutcome(gs))
	default:
		a.grpcTrailers = true
	}
	a.res = res
	return res, nil
}

// finish ends an attempt whose response body was closed. A mirrored
// request's attempt belongs to no exchange and holds no more.
func (a *attempt) finish() {
	a.pool.active.Add(-1)
	if a.x == nil {
		return
	}
	if a.grpcTrailers {
		// A gRPC response's status is in its trailers, known once the
		// body was read to its end; a body cut short reports nothing.
		if gs := a.res.Trailer.Get("Grpc-Status"); gs != "" {
			a.x.st.report(a.x.d.Cluster, a.host, grpcOutcome(gs))
		}
	}
	a.end()
}

// end gives back what the attempt held: its per-try timeout, its
// max_requests slot, and its retry slot.
func (a *attempt) end() {
	if a.cancel != nil {
		a.cancel()
	}
	a.x.adm.RequestDone()
	if a.retry {
		a.x.adm.RetryDone()
	}
}

// reportError reports an attempt that ended without a response: a
// connection that could not be had is a connect failure, a timeout of the
// attempt a timeout, anything else a reset. An attempt refused by a
// circuit breaker, or given up by the client, says nothing of the host.
func (x *exchange) reportError(h *upstream.Host, ctx context.Context, err error) {
	var ce *connectError
	switch {
	case errors.Is(err, errOverflow), errors.Is(err, errNotNeeded), x.r.Context().Err() != nil:
		return
	case errors.As(err, &ce):
		x.st.report(x.d.Cluster, h, upstream.ConnectFailed)
	case ctx.Err() != nil || (x.upCtx != nil && x.upCtx.Err() != nil):
		x.st.report(x.d.Cluster, h, upstream.TimedOut)
	default:
		x.st.report(x.d.Cluster, h, upstream.Reset)
	}
}

// overflow answers a request a circuit breaker refused, as Envoy does:
// 503, flag UO, marked overloaded; worded for a retried request when an
// attempt was made before.
func (x *exchange) overflow() {
	r := upstream.Overflow
	if x.attempts > 1 {
		r = r.Retried()
	}
	x.w.Header().Set(upstream.OverloadedHeader, "true")
	x.localReply(r.Status, r.Body, r.Flag)
}

// backOff waits Envoy's jittered exponential back-off before retry i.
func (x *exchange) backOff(ctx context.Context, i int, p *route.RetryPolicy) error {
	base := p.BackOffBase
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	limit := p.BackOffMax
	if limit <= 0 {
		limit = 10 * base
	}
	ceiling := base << min(i, 16)
	if ceiling > limit || ceiling <= 0 {
		ceiling = limit
	}
	d := time.Duration(mrand.Int64N(int64(ceiling)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// repick chooses the endpoint of the next attempt and its pool.
func (x *exchange) repick(tried []netip.AddrPort) bool {
	pr := upstream.PickRequest{Random: mrand.Uint64()}
	if x.retry.RetryOtherHosts {
		pr.Attempted = tried
	}
	h, ok := x.st.pick(x.d.Cluster, pr)
	if !ok {
		return false
	}
	key := poolKey{cluster: x.d.Cluster, endpoint: h.Endpoint.Addr, identity: h.Endpoint.Identity, client: x.t.client.Addr(), h2: x.h2}
	cp, err := x.p.up.get(key, h.Endpoint, x.cluster)
	if err != nil {
		return false
	}
	x.host.End()
	h.Begin()
	x.host, x.ep, x.pool = h, h.Endpoint, cp
	x.rec.UpstreamHost = h.Endpoint.Addr
	x.rec.Destination = destinationPeer(h.Endpoint)
	return true
}
