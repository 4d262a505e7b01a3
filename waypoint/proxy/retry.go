package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
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
// with a longer (or unknown-length) body is sent once.
const maxRetryBody = 64 << 10

// retryable says whether an attempt's outcome meets one of the policy's
// retry_on conditions (Envoy's router semantics).
func retryable(p *route.RetryPolicy, res *http.Response, err error) bool {
	on := func(c string) bool { return slices.Contains(p.RetryOn, c) }
	if err != nil {
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

// replayable makes r's body readable again for a retry: no body, or a
// small one of known length read now. false when it cannot be.
func replayable(r *http.Request) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	if r.ContentLength <= 0 || r.ContentLength > maxRetryBody {
		return false
	}
	b := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, b); err != nil {
		return false
	}
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return true
}

// roundTripRetrying sends r as the route's retry policy says: each retry
// on a freshly picked endpoint (avoiding those tried when the policy asks),
// after a jittered exponential back-off, with a per-try timeout.
func (x *exchange) roundTripRetrying(r *http.Request) (*http.Response, error) {
	p := x.retry
	if p == nil || !replayable(r) {
		return x.attempt(r, 0)
	}
	tries := int(p.NumRetries) + 1
	var tried []netip.AddrPort
	for i := 0; ; i++ {
		if i > 0 {
			if err := x.backOff(r.Context(), i, p); err != nil {
				return nil, err
			}
			if !x.repick(tried) {
				return nil, errNoHealthyRetry
			}
			if r.GetBody != nil {
				body, _ := r.GetBody()
				r = r.Clone(r.Context())
				r.Body = body
			} else {
				r = r.Clone(r.Context())
			}
			r.URL.Host = x.ep.Addr.String()
		}
		if x.d.VirtualHost != nil && x.d.VirtualHost.IncludeRequestAttemptCount {
			r.Header.Set("X-Envoy-Attempt-Count", strconv.Itoa(i+1))
		}
		tried = append(tried, x.ep.Addr)
		res, err := x.attempt(r, p.PerTryTimeout)
		if !retryable(p, res, err) || r.Context().Err() != nil {
			return res, err
		}
		if i == tries-1 {
			x.flag(flagRetryExhausted)
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
// the bound covers the response body too, as Envoy's per-try timeout.
func (x *exchange) attempt(r *http.Request, perTry time.Duration) (*http.Response, error) {
	if perTry <= 0 {
		return x.pool.roundTrip(r)
	}
	ctx, cancel := context.WithTimeoutCause(r.Context(), perTry, errRouteTimeout)
	res, err := x.pool.roundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	res.Body = &doneBody{ReadCloser: res.Body, done: cancel}
	return res, nil
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
	key := poolKey{endpoint: h.Endpoint.Addr, identity: h.Endpoint.Identity, client: x.t.client.Addr(), h2: x.upstreamH2(x.cluster)}
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
