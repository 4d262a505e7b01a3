package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log-line classes of refused connections and requests, the keys of the
// rejection log's buckets.
const (
	rejectAuthority = "authority" // CONNECT authority not this pod
	rejectSelfCall  = "self-call" // a destination on ztunnel's own ports
	rejectForwarded = "forwarded" // Forwarded for= ignored
	rejectDenied    = "denied"    // refused by policy (401)
	rejectUpstream  = "upstream"  // the app could not be dialled (503)
	rejectOutbound  = "outbound"  // an outbound connection refused by the plan
	rejectHBONE     = "hbone"     // the HBONE server's own rejections (malformed requests)
)

// Rejection log defaults: a peer can make ztunnel refuse as fast as it can
// send, and each refusal would be a log line. Per class, a burst of
// rejectBurst lines, then rejectRate a second; the rest are counted and
// the count is reported on the next line written.
const (
	rejectBurst = 20
	rejectRate  = 2
	// rejectMaxKeys bounds the buckets: keys beyond it share one.
	rejectMaxKeys = 32
)

// logLimiter is a token bucket per key for log lines.
type logLimiter struct {
	burst, rate float64
	now         func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens  float64
	last    time.Time
	dropped uint64
}

func newLogLimiter(burst, perSecond float64, now func() time.Time) *logLimiter {
	if now == nil {
		now = time.Now
	}
	return &logLimiter{burst: burst, rate: perSecond, now: now, buckets: map[string]*bucket{}}
}

// allow reports whether a line of class key may be written now and, if
// so, how many lines of that class were dropped since the last one written.
func (l *logLimiter) allow(key string) (bool, uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= rejectMaxKeys-1 { // one left for the shared bucket
			key = ""
			b = l.buckets[key]
		}
		if b == nil {
			b = &bucket{tokens: l.burst, last: now}
			l.buckets[key] = b
		}
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		b.dropped++
		return false, 0
	}
	b.tokens--
	dropped := b.dropped
	b.dropped = 0
	return true, dropped
}

// logRejected writes a rejection's log line within its class's rate; a
// line written after a silence carries "suppressed": how many it stood for.
func (p *Proxy) logRejected(key string, level slog.Level, msg string, attrs ...slog.Attr) {
	ctx := context.Background()
	if !p.log.Enabled(ctx, level) {
		return
	}
	ok, dropped := p.rejects.allow(key)
	if !ok {
		return
	}
	if dropped > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", dropped))
	}
	p.log.LogAttrs(ctx, level, msg, attrs...)
}

// limitedHandler passes a logger's records on within a logLimiter's rate,
// one class per message: for components (the HBONE server) whose log lines
// a peer can trigger at will.
type limitedHandler struct {
	slog.Handler
	lim *logLimiter
}

func (h limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	ok, dropped := h.lim.allow(rejectHBONE + ": " + r.Message)
	if !ok {
		return nil
	}
	if dropped > 0 {
		r.AddAttrs(slog.Uint64("suppressed", dropped))
	}
	return h.Handler.Handle(ctx, r)
}

func (h limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return limitedHandler{h.Handler.WithAttrs(as), h.lim}
}

func (h limitedHandler) WithGroup(name string) slog.Handler {
	return limitedHandler{h.Handler.WithGroup(name), h.lim}
}
