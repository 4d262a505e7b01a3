package upstream

import (
	"sync"
	"sync/atomic"
	"time"
)

// Admission is one cluster's circuit breakers (Envoy's default-priority
// thresholds, which Istio fills from a DestinationRule's connectionPool)
// and the connection-pool settings the proxy applies to the cluster's
// upstream connections. The proxy asks it before it opens a connection,
// queues a request for one, sends a request, or retries one; a refusal is
// an overflow, counted as Envoy counts it.
//
//   - TryConnection: max_connections (tcp.maxConnections), upstream
//     connections open. Over the limit an HTTP request waits for a
//     connection (it is pending; Envoy does not fail it) and a TCP tunnel
//     is refused; upstream_cx_overflow counts it.
//   - TryPending: max_pending_requests (http.http1MaxPendingRequests),
//     requests waiting for a connection. Over the limit the request fails
//     with 503 Overflow (UO); upstream_rq_pending_overflow counts it.
//   - TryRequest: max_requests (http.http2MaxRequests), requests in
//     flight to the cluster. Over the limit the request fails with 503
//     Overflow (UO); upstream_rq_pending_overflow counts it (the counter
//     Envoy up to 1.37, which Istio ships, uses) and so does
//     upstream_rq_active_overflow (its own counter since Envoy 1.38).
//   - TryRetry: max_retries (http.maxRetries), retries in flight. Over the
//     limit the retry is not made: the attempt's response or error stands,
//     with flag UO added; upstream_rq_retry_overflow counts it.
//
// Each successful Try needs exactly one matching Done. Admissions are
// exact (the N+1th concurrent holder is refused, never the Nth), lock-free
// (a compare-and-swap per Try, an add per Done, each count on its own
// cache line) and allocation-free. An Admission built for a new snapshot
// with NewAdmission(prev, …) shares its counts and statistics with prev,
// so requests in flight across a configuration push stay counted against
// the new limits.
type Admission struct {
	limits         Limits
	http           HTTPOptions
	connectTimeout time.Duration
	s              *admissionState
}

// padded keeps each hot count on its own cache line: connections and
// requests are taken by different goroutines at the same time.
type padded struct {
	atomic.Uint64
	_ [56]byte
}

type admissionState struct {
	cx, pending, rq, retries padded

	cxOverflow, pendingOverflow, activeOverflow, retryOverflow atomic.Uint64

	// released is closed, and replaced, when a connection or request slot
	// is given back while requests are pending: they wait on it instead
	// of polling. Taken only when pending is not zero.
	mu       sync.Mutex
	released chan struct{}
}

// wake tells the pending requests that a slot was given back.
func (s *admissionState) wake() {
	if s.pending.Load() == 0 {
		return
	}
	s.mu.Lock()
	if s.released != nil {
		close(s.released)
		s.released = nil
	}
	s.mu.Unlock()
}

// NewAdmission builds the admission of cluster c; prev (nil for none) is
// the same cluster's in the previous snapshot, whose counts it takes over.
func NewAdmission(prev *Admission, c *Cluster) *Admission {
	a := &Admission{limits: c.Limits, http: c.HTTP, connectTimeout: c.ConnectTimeout}
	if a.connectTimeout <= 0 {
		a.connectTimeout = DefaultConnectTimeout
	}
	if prev != nil {
		a.s = prev.s
	} else {
		a.s = &admissionState{}
	}
	return a
}

// Admissions builds the admissions of a snapshot's clusters, carrying each
// cluster's counts over from prev.
func Admissions(prev map[string]*Admission, clusters map[string]*Cluster) map[string]*Admission {
	out := make(map[string]*Admission, len(clusters))
	for name, c := range clusters {
		out[name] = NewAdmission(prev[name], c)
	}
	return out
}

// acquire takes one of limit slots of c, or reports false when all are
// taken.
func acquire(c *atomic.Uint64, limit uint32) bool {
	for {
		n := c.Load()
		if n >= uint64(limit) {
			return false
		}
		if c.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release frees one slot of c. A release without a take (a bug in the
// caller) is dropped rather than wrapping the count, which would refuse
// every request of the cluster from then on.
func release(c *atomic.Uint64) {
	for {
		n := c.Load()
		if n == 0 || c.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// TryConnection asks to open one upstream connection (or HBONE stream
// carrying one). False: max_connections reached.
func (a *Admission) TryConnection() bool {
	if acquire(&a.s.cx.Uint64, a.limits.MaxConnections) {
		return true
	}
	a.s.cxOverflow.Add(1)
	return false
}

// TakeConnection is TryConnection without counting a refusal in
// upstream_cx_overflow: for a pending request that asks again after a
// release, whose overflow was counted once (CountConnectionOverflow).
func (a *Admission) TakeConnection() bool {
	return acquire(&a.s.cx.Uint64, a.limits.MaxConnections)
}

// CountConnectionOverflow counts one upstream_cx_overflow: a request found
// max_connections reached (and waits, pending, for a connection).
func (a *Admission) CountConnectionOverflow() { a.s.cxOverflow.Add(1) }

// ConnectionDone releases a connection TryConnection admitted, when it
// closes.
func (a *Admission) ConnectionDone() {
	release(&a.s.cx.Uint64)
	a.s.wake()
}

// Released returns a channel that is closed the next time a connection or
// request slot is given back. A pending request takes it, then asks for
// its connection again, then waits on it: a release between the two is
// not missed.
func (a *Admission) Released() <-chan struct{} {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.s.released == nil {
		a.s.released = make(chan struct{})
	}
	return a.s.released
}

// TryPending asks for a request to wait for a connection. False:
// max_pending_requests reached; answer 503 Overflow.
func (a *Admission) TryPending() bool {
	if acquire(&a.s.pending.Uint64, a.limits.MaxPendingRequests) {
		return true
	}
	a.s.pendingOverflow.Add(1)
	return false
}

// PendingDone releases a pending slot, when the request has its
// connection or gives up waiting.
func (a *Admission) PendingDone() { release(&a.s.pending.Uint64) }

// TryRequest asks to send one request (each attempt of a retried request
// is one). False: max_requests reached; answer 503 Overflow.
func (a *Admission) TryRequest() bool {
	if acquire(&a.s.rq.Uint64, a.limits.MaxRequests) {
		return true
	}
	a.s.pendingOverflow.Add(1)
	a.s.activeOverflow.Add(1)
	return false
}

// RequestDone releases a request slot, when the attempt's response has
// ended (or it failed).
func (a *Admission) RequestDone() {
	release(&a.s.rq.Uint64)
	// A finished HTTP/1.1 request leaves its connection idle: a pending
	// request may use it.
	a.s.wake()
}

// TryRetry asks to make one retry. False: max_retries reached; the retry
// is not made, the last attempt's result is returned with flag UO.
func (a *Admission) TryRetry() bool {
	if acquire(&a.s.retries.Uint64, a.limits.MaxRetries) {
		return true
	}
	a.s.retryOverflow.Add(1)
	return false
}

// RetryDone releases a retry slot, when the retry attempt has ended.
func (a *Admission) RetryDone() { release(&a.s.retries.Uint64) }

// ConnectTimeout bounds the dial of one upstream connection (the
// cluster's connect_timeout, Istio's tcp.connectTimeout); past it the
// attempt fails with 503 ConnectFailure (UF) and is reported to outlier
// detection as ConnectFailed.
func (a *Admission) ConnectTimeout() time.Duration { return a.connectTimeout }

// IdleTimeout is how long an upstream connection without requests is
// kept (http.idleTimeout; 0: forever).
func (a *Admission) IdleTimeout() time.Duration { return a.http.IdleTimeout }

// MaxRequestsPerConnection is the number of requests one upstream
// connection may carry before it is closed (http.maxRequestsPerConnection;
// 0: no limit).
func (a *Admission) MaxRequestsPerConnection() uint32 { return a.http.MaxRequestsPerConnection }

// LastOnConnection reports whether the n-th request (counting from 1) on a
// connection is the last one it may carry: the pool sends it with
// "Connection: close" (HTTP/1.1) or stops using the connection for new
// streams (HTTP/2), and closes it once the request ends.
func (a *Admission) LastOnConnection(n uint64) bool {
	m := a.http.MaxRequestsPerConnection
	return m > 0 && n >= uint64(m)
}

// Limits returns the thresholds in force.
func (a *Admission) Limits() Limits { return a.limits }

// AdmissionStats are a cluster's circuit-breaker counts and overflows.
// Overflow counters are carried across snapshots and only grow.
type AdmissionStats struct {
	// Connections, Pending, Requests and Retries are held now; Limits are
	// their thresholds (Envoy's circuit_breakers.default.remaining_cx,
	// remaining_pending, remaining_rq and remaining_retries are the
	// differences).
	Connections, Pending, Requests, Retries uint64
	Limits                                  Limits
	// CxOverflow: upstream_cx_overflow.
	CxOverflow uint64
	// RqPendingOverflow: upstream_rq_pending_overflow (pending and
	// max_requests overflows, as Envoy up to 1.37 counts them).
	RqPendingOverflow uint64
	// RqActiveOverflow: upstream_rq_active_overflow (max_requests only).
	RqActiveOverflow uint64
	// RqRetryOverflow: upstream_rq_retry_overflow.
	RqRetryOverflow uint64
	// The breakers at their limit (gauges that are 0 or 1:
	// circuit_breakers.default.cx_open, rq_pending_open, rq_open,
	// rq_retry_open).
	CxOpen, RqPendingOpen, RqOpen, RqRetryOpen bool
}

// Stats returns the cluster's admission statistics.
func (a *Admission) Stats() AdmissionStats {
	s := AdmissionStats{
		Connections:       a.s.cx.Load(),
		Pending:           a.s.pending.Load(),
		Requests:          a.s.rq.Load(),
		Retries:           a.s.retries.Load(),
		CxOverflow:        a.s.cxOverflow.Load(),
		RqPendingOverflow: a.s.pendingOverflow.Load(),
		RqActiveOverflow:  a.s.activeOverflow.Load(),
		RqRetryOverflow:   a.s.retryOverflow.Load(),
		Limits:            a.limits,
	}
	s.CxOpen = s.Connections >= uint64(a.limits.MaxConnections)
	s.RqPendingOpen = s.Pending >= uint64(a.limits.MaxPendingRequests)
	s.RqOpen = s.Requests >= uint64(a.limits.MaxRequests)
	s.RqRetryOpen = s.Retries >= uint64(a.limits.MaxRetries)
	return s
}

// Each calls f with every statistic under its Envoy name (without the
// cluster.<name>. prefix); gauge tells a gauge from a counter.
func (s AdmissionStats) Each(f func(name string, value uint64, gauge bool)) {
	b := func(v bool) uint64 {
		if v {
			return 1
		}
		return 0
	}
	f("circuit_breakers.default.remaining_cx", remaining(s.Limits.MaxConnections, s.Connections), true)
	f("circuit_breakers.default.remaining_pending", remaining(s.Limits.MaxPendingRequests, s.Pending), true)
	f("circuit_breakers.default.remaining_rq", remaining(s.Limits.MaxRequests, s.Requests), true)
	f("circuit_breakers.default.remaining_retries", remaining(s.Limits.MaxRetries, s.Retries), true)
	f("upstream_cx_overflow", s.CxOverflow, false)
	f("upstream_rq_pending_overflow", s.RqPendingOverflow, false)
	f("upstream_rq_active_overflow", s.RqActiveOverflow, false)
	f("upstream_rq_retry_overflow", s.RqRetryOverflow, false)
	f("circuit_breakers.default.cx_open", b(s.CxOpen), true)
	f("circuit_breakers.default.rq_pending_open", b(s.RqPendingOpen), true)
	f("circuit_breakers.default.rq_open", b(s.RqOpen), true)
	f("circuit_breakers.default.rq_retry_open", b(s.RqRetryOpen), true)
}

func remaining(limit uint32, held uint64) uint64 {
	return uint64(limit) - min(held, uint64(limit))
}
