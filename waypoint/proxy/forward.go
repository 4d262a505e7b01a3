package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"
)

// exchangeUpstream sends a request that asks for no upgrade to its
// endpoint and streams the response back: what httputil.ReverseProxy does
// for such a request, word for word in behaviour (hop-by-hop headers
// stripped both ways, "Te: trailers" kept, 1xx responses passed on,
// trailers announced and copied, every body write flushed at once, a
// failed body copy aborting the downstream connection), without the
// copies it makes because it may not touch the handler's request: the
// request is the exchange's own, so its header map and URL are reused and
// the response's header values are handed over rather than copied. An
// Upgrade (WebSocket) goes through Proxy.rp, which joins the connections.
func (x *exchange) exchangeUpstream(ctx context.Context) {
	in := x.r
	out := in.WithContext(ctx)
	x.outURL = *in.URL
	out.URL = &x.outURL
	if in.ContentLength == 0 {
		out.Body = nil // a body-less request is retried by the transport
	}
	var body *closeOnceBody
	if out.Body != nil {
		// The transport may still read the body after the exchange ends
		// (an HTTP/1 request body written while the response came back);
		// once the handler returns it must not.
		body = &closeOnceBody{rc: out.Body}
		out.Body = body
		defer body.Close()
	}
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	trailers := httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers")
	x.prepare(out)
	out.Close = false
	removeHopByHop(out.Header)
	if trailers {
		out.Header.Set("Te", "trailers")
	}

	res, err := x.roundTripRetrying(out)
	if err != nil {
		x.upstreamError(err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing asked for an upgrade: the endpoint answered out of turn.
		res.Body.Close()
		x.upstreamError(errors.New("endpoint switched protocols on a request that asked for no upgrade"))
		return
	}
	removeHopByHop(res.Header)
	x.modifyResponse(res)
	h := x.w.Header()
	for k, vv := range res.Header {
		if old, ok := h[k]; ok {
			h[k] = append(old, vv...)
		} else {
			h[k] = vv
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	x.w.WriteHeader(res.StatusCode)
	if res.ContentLength < 0 {
		// A streamed response (gRPC, server-sent events, chunked): its
		// headers go now, whenever its first bytes come. A response of
		// known length is written with its first bytes.
		x.flush()
	}
	if err := x.copyBody(res.Body); err != nil {
		res.Body.Close()
		// The client got part of a response: abort its connection (or
		// stream) rather than let the response look complete.
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // before reading res.Trailer
	if len(res.Trailer) > 0 {
		// Chunked, so that the trailers can follow.
		x.flush()
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			h[k] = append(h[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		h[k] = append(h[k], vv...)
	}
}

// copyBody writes the response body to the client, flushing each write.
func (x *exchange) copyBody(body io.Reader) error {
	bp := copyBufferPool.Get().(*[]byte)
	defer copyBufferPool.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if rerr != nil && rerr != io.EOF && !errors.Is(rerr, context.Canceled) {
			x.p.log.Debug("upstream response body read failed", "dst.addr", x.pool.host, "reason", rerr.Error())
		}
		if n > 0 {
			m, werr := x.w.Write(buf[:n])
			if werr != nil {
				return werr
			}
			if m != n {
				return io.ErrShortWrite
			}
			x.flush()
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// flush sends what the client's response holds so far.
func (x *exchange) flush() {
	if f, ok := x.rw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// got1xx passes an informational response (100 Continue, 103 Early
// Hints) on to the client while the attempt waits for the final one.
func (a *attempt) got1xx(code int, header textproto.MIMEHeader) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.returned {
		// The final response is being written: its headers are not
		// the 1xx's to touch.
		return nil
	}
	h := a.x.w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	a.x.w.WriteHeader(code)
	// The response writer keeps the header map for the final response.
	clear(h)
	return nil
}

// hopHeaders are the hop-by-hop headers a proxy removes (RFC 9110 §7.6.1),
// besides those the Connection header names.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopByHop removes the hop-by-hop headers from h.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

// closeOnceBody is a request body the transport reads until the exchange
// closes it; it leaves the handler's body to the HTTP server to close.
type closeOnceBody struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

func (b *closeOnceBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.rc.Read(p)
}

func (b *closeOnceBody) Close() error {
	b.closed.Store(true)
	return nil
}
