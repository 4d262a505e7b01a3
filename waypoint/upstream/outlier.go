package upstream

import (
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome is what became of one request attempt on a host, as the proxy
// reports it to the cluster's Detector: an HTTP status (Status), or one of
// the local-origin outcomes below.
type Outcome int32

// Local-origin outcomes: what the waypoint itself saw of the host, before or
// instead of a response.
const (
	// Connected: the attempt has a connection to the host and the request
	// went out. With split local-origin errors it ends a run of local-origin
	// failures; otherwise it counts nothing (the response's status will).
	Connected Outcome = -1
	// ConnectFailed: no connection (refused, unreachable, the HBONE or TLS
	// handshake failed, connect timeout).
	ConnectFailed Outcome = -2
	// Reset: the connection or stream broke before the response headers.
	Reset Outcome = -3
	// TimedOut: the attempt's timeout (per-try or route) ended it while it
	// waited for this host.
	TimedOut Outcome = -4
)

// Status is the outcome of a response with HTTP status code. A gRPC
// response whose headers carry grpc-status (trailers only) and whose HTTP
// status is not 5xx is reported as GRPCStatus(grpc-status), as Envoy's
// router does.
func Status(code int) Outcome { return Outcome(code) }

// GRPCStatus is the outcome of a gRPC status code, mapped to the HTTP
// status Envoy uses for it.
func GRPCStatus(code int) Outcome {
	switch code {
	case 0:
		return 200
	case 1:
		return 499
	case 3, 9, 11:
		return 400
	case 4:
		return 504
	case 5:
		return 404
	case 6, 10:
		return 409
	case 7:
		return 403
	case 8:
		return 429
	case 12:
		return 501
	case 14:
		return 503
	case 16:
		return 401
	}
	return 500 // UNKNOWN, INTERNAL, DATA_LOSS and codes beyond
}

func (o Outcome) String() string {
	switch o {
	case Connected:
		return "connected"
	case ConnectFailed:
		return "connect failure"
	case Reset:
		return "reset"
	case TimedOut:
		return "timeout"
	}
	return "status " + strconv.Itoa(int(o))
}

// EjectionType is the rule that ejected a host, named as Envoy's
// outlier_detection event and stats name it.
type EjectionType int

const (
	Consecutive5xx EjectionType = iota
	ConsecutiveGatewayFailure
	ConsecutiveLocalOriginFailure
	numEjectionTypes
)

func (t EjectionType) String() string {
	switch t {
	case Consecutive5xx:
		return "consecutive_5xx"
	case ConsecutiveGatewayFailure:
		return "consecutive_gateway_failure"
	case ConsecutiveLocalOriginFailure:
		return "consecutive_local_origin_failure"
	}
	return "unknown"
}

// Detector is one cluster's outlier detection, as Envoy's does it with the
// consecutive-error rules (the only ones Istio configures): the proxy
// reports each attempt's outcome on a host, and a host that reaches a
// rule's threshold of consecutive errors is ejected from load balancing
// through the cluster's Balancer.
//
//   - A 5xx counts towards consecutive_5xx; a 502, 503 or 504 also towards
//     consecutive_gateway_failure; any other status ends both runs (a 500
//     ends only the gateway run).
//   - Without split_external_local_origin_errors a connect failure or a
//     reset counts as a 503 and a timeout as a 504. With it, they count
//     towards consecutive_local_origin_failure instead, and Connected ends
//     that run; statuses then count only towards the 5xx and gateway rules.
//   - A rule fires when its count reaches the threshold exactly (0 never
//     fires), then its count starts again. It ejects only with its
//     enforcing percentage (drawn), only if the host is not ejected
//     already, and only if the ejected hosts, this one included, stay
//     within max_ejection_percent of all the cluster's hosts:
//     100 × (ejected + 1) ≤ max_ejection_percent × hosts, so a cluster of
//     9 hosts with the default 10 % ejects none (Envoy without
//     always_eject_one_host). A refusal counts in ejections_overflow.
//   - The ejection lasts base_ejection_time × the host's ejection
//     multiplier, capped at max_ejection_time. The multiplier grows by one
//     with each ejection (while multiplier × base < max + base) and drops
//     by one at every interval tick the host spends in service, so a host
//     that keeps failing stays out longer and longer and one that recovers
//     is forgiven over time.
//   - Hosts come back at the first interval tick (the detector's creation
//     plus a whole number of intervals) at or after the ejection's end, as
//     Envoy's interval timer returns them; the 5xx and gateway counts of a
//     host start again when it comes back.
//
// Ejected hosts are left out of picks unless the cluster's priority level
// is below the healthy panic threshold (Istio's minHealthPercent), where
// the Balancer uses them again; with every host ejected and no panic
// threshold a pick fails and the proxy answers 503 "no healthy upstream".
//
// The detector needs no goroutine or timer: the counting is lock-free in
// Report, an ejection takes a mutex, interval ticks are computed from the
// clock when they matter, and the Balancer returns a host when its
// ejection's time has come. A detector built for a new snapshot with
// NewDetector(prev, …) shares its hosts' counts, ejection multipliers and
// statistics with prev for every host still there.
type Detector struct {
	name  string
	cfg   OutlierDetection
	b     *Balancer
	lin   *detectorLineage
	hosts map[*liveState]*hostMonitor
	log   *slog.Logger
}

// detectorLineage is what the detectors of one cluster share across
// snapshots.
type detectorLineage struct {
	// current is the newest detector: reports through an older one (a
	// request that started before a snapshot update) are counted there,
	// against the newest hosts and configuration.
	current atomic.Pointer[Detector]
	// start is the Unix time in nanoseconds of the first interval tick.
	start int64
	// mu serialises ejections (Envoy's main thread).
	mu    sync.Mutex
	randN func(n uint64) uint64

	enforcedTotal, overflow atomic.Uint64
	detected, enforced      [numEjectionTypes]atomic.Uint64
}

// hostMonitor is one host's outlier state.
type hostMonitor struct {
	c5xx, gateway, local atomic.Uint32
	// resetAt is the Unix time in nanoseconds at which the host's current
	// ejection ends; the first report from then on zeroes the 5xx and
	// gateway counts. 0 when nothing is pending.
	resetAt atomic.Int64

	// Guarded by the lineage's mu.
	multiplier uint64
	// backAt is when the last ejection ended (the tick the host came back
	// at); the multiplier drops by one at each tick after it.
	backAt   int64
	ejection uint64
}

// DetectorOptions are a detector's optional parts.
type DetectorOptions struct {
	// Logger receives one line per ejection; nil logs nothing.
	Logger *slog.Logger
}

// NewDetector builds the outlier detector of b's cluster, or returns nil
// when the cluster has no outlier detection (Report on a nil Detector does
// nothing). prev, the detector of the same cluster in the previous
// snapshot (nil for none), passes on its hosts' state: counts, ejection
// multipliers, statistics and the interval ticks. The detector reads b's
// clock, so that its ejections and the balancer's picks agree on the time.
func NewDetector(prev *Detector, b *Balancer, o DetectorOptions) *Detector {
	if b == nil || b.cluster == nil || b.cluster.Outlier == nil {
		if prev != nil && b != nil {
			// Outlier detection was removed: its ejections go with it.
			for i := range b.hosts {
				h := &b.hosts[i]
				if prev.hosts[h.live] != nil && h.Ejected(b.now()) {
					b.Eject(h, time.Unix(0, 0))
				}
			}
		}
		return nil
	}
	d := &Detector{name: b.cluster.Name, cfg: *b.cluster.Outlier, b: b, log: o.Logger,
		hosts: make(map[*liveState]*hostMonitor, len(b.hosts))}
	if d.cfg.Interval <= 0 {
		d.cfg.Interval = time.Nanosecond
	}
	if prev != nil {
		d.lin = prev.lin
	} else {
		d.lin = &detectorLineage{start: b.now().UnixNano(), randN: rand.Uint64N}
	}
	for i := range b.hosts {
		l := b.hosts[i].live
		m := (*hostMonitor)(nil)
		if prev != nil {
			m = prev.hosts[l]
		}
		if m == nil {
			m = &hostMonitor{}
		}
		d.hosts[l] = m
	}
	d.lin.current.Store(d)
	return d
}

// Detectors builds the detectors of a snapshot's clusters from their
// balancers (see Balancers), carrying each cluster's state over from prev.
// Clusters without outlier detection have none. A detector whose balancer
// did not change is kept as it is.
func Detectors(prev map[string]*Detector, balancers map[string]*Balancer, o DetectorOptions) map[string]*Detector {
	out := make(map[string]*Detector, len(balancers))
	for name, b := range balancers {
		p := prev[name]
		if p != nil && p.b == b {
			out[name] = p
			continue
		}
		if d := NewDetector(p, b, o); d != nil {
			out[name] = d
		}
	}
	return out
}

// Report records the outcome of one attempt on h. It is safe for
// concurrent use, takes no lock unless the outcome ejects the host, and
// does not allocate. h may come from this detector's balancer or from one
// it was built from (a request that started before a snapshot update); a
// host the cluster no longer has is ignored, as are reports to a nil
// Detector.
func (d *Detector) Report(h *Host, o Outcome) {
	if d == nil || h == nil {
		return
	}
	d = d.lin.current.Load()
	m := d.hosts[h.live]
	if m == nil {
		return
	}
	if r := m.resetAt.Load(); r != 0 && d.b.now().UnixNano() >= r && m.resetAt.CompareAndSwap(r, 0) {
		// The host came back from an ejection: its counts start again, so
		// that a count left near its threshold does not eject it again on
		// very few new errors.
		m.c5xx.Store(0)
		m.gateway.Store(0)
	}
	if o >= 0 {
		d.status(h, m, int(o))
		return
	}
	if d.cfg.SplitExternalLocalOriginErrors {
		switch o {
		case Connected:
			clear32(&m.local)
		case ConnectFailed, Reset, TimedOut:
			if m.local.Add(1) == d.cfg.ConsecutiveLocalOriginFailure {
				d.fire(h, m, ConsecutiveLocalOriginFailure)
			}
		}
		return
	}
	switch o {
	case ConnectFailed, Reset:
		d.status(h, m, 503)
	case TimedOut:
		d.status(h, m, 504)
	}
}

func (d *Detector) status(h *Host, m *hostMonitor, code int) {
	if code < 500 || code > 599 {
		clear32(&m.c5xx)
		clear32(&m.gateway)
		return
	}
	if code >= 502 && code <= 504 {
		if m.gateway.Add(1) == d.cfg.ConsecutiveGatewayFailure {
			d.fire(h, m, ConsecutiveGatewayFailure)
		}
	} else {
		clear32(&m.gateway)
	}
	if m.c5xx.Add(1) == d.cfg.Consecutive5xx {
		d.fire(h, m, Consecutive5xx)
	}
}

// clear32 zeroes c, writing only when it is not zero already: a run of
// successes does not make every report write a shared cache line.
func clear32(c *atomic.Uint32) {
	if c.Load() != 0 {
		c.Store(0)
	}
}

// fire handles a rule reaching its threshold on h.
func (d *Detector) fire(h *Host, m *hostMonitor, t EjectionType) {
	l := d.lin
	l.mu.Lock()
	defer l.mu.Unlock()
	now := d.b.now().UnixNano()
	if h.ejectedAt(now) {
		// Already out: nothing to do, and the count is left as it is
		// (Envoy's rule); it starts again when the host comes back.
		return
	}
	l.detected[t].Add(1)
	defer func() {
		switch t {
		case Consecutive5xx:
			m.c5xx.Store(0)
		case ConsecutiveGatewayFailure:
			m.gateway.Store(0)
		case ConsecutiveLocalOriginFailure:
			m.local.Store(0)
		}
	}()
	total := uint64(len(d.b.hosts))
	ejected := uint64(0)
	for i := range d.b.hosts {
		if d.b.hosts[i].ejectedAt(now) {
			ejected++
		}
	}
	if 100*(ejected+1) > uint64(min(100, d.cfg.MaxEjectionPercent))*total {
		l.overflow.Add(1)
		if d.log != nil {
			d.log.Debug("outlier detection: ejection refused by max_ejection_percent",
				"cluster", d.name, "dst.addr", h.Endpoint.Addr.String(), "reason", t.String(),
				"ejected", ejected, "hosts", total, "max_ejection_percent", d.cfg.MaxEjectionPercent)
		}
		return
	}
	if !d.enforce(t) {
		return
	}
	iv := int64(d.cfg.Interval)
	if m.backAt != 0 {
		// One step down for every tick the host spent in service since it
		// came back.
		m.multiplier -= min(m.multiplier, uint64(ticks(l.start, iv, m.backAt, now)))
	}
	base, maxT := uint64(d.cfg.BaseEjectionTime), uint64(max(d.cfg.MaxEjectionTime, d.cfg.BaseEjectionTime))
	if m.multiplier*base < maxT+base {
		m.multiplier++
	}
	dur := min(base*m.multiplier, maxT)
	until := tickAtOrAfter(l.start, iv, now+int64(dur))
	m.backAt = until
	m.ejection++
	m.resetAt.Store(until)
	l.enforced[t].Add(1)
	l.enforcedTotal.Add(1)
	d.b.Eject(h, time.Unix(0, until))
	if d.log != nil {
		d.log.Info("outlier detection: host ejected", "cluster", d.name,
			"dst.addr", h.Endpoint.Addr.String(), "reason", t.String(),
			"ejection", m.ejection, "duration", time.Duration(until-now).String())
	}
}

// enforce draws whether a detected ejection of type t is carried out.
func (d *Detector) enforce(t EjectionType) bool {
	var p uint32
	switch t {
	case Consecutive5xx:
		p = d.cfg.EnforcingConsecutive5xx
	case ConsecutiveGatewayFailure:
		p = d.cfg.EnforcingGatewayFailure
	case ConsecutiveLocalOriginFailure:
		p = d.cfg.EnforcingLocalOriginFailure
	}
	switch {
	case p >= 100:
		return true
	case p == 0:
		return false
	}
	return d.lin.randN(100) < uint64(p)
}

// ticks counts the interval ticks start + k×iv in (from, to].
func ticks(start, iv, from, to int64) int64 {
	if to <= from {
		return 0
	}
	return floorDiv(to-start, iv) - floorDiv(from-start, iv)
}

// tickAtOrAfter is the first tick start + k×iv not before t.
func tickAtOrAfter(start, iv, t int64) int64 {
	k := floorDiv(t-start, iv)
	if start+k*iv < t {
		k++
	}
	return start + k*iv
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// OutlierStats are a cluster's outlier detection statistics. Counters
// are carried across snapshots and only grow.
type OutlierStats struct {
	// EjectionsActive is the number of hosts ejected now (a gauge;
	// outlier_detection.ejections_active).
	EjectionsActive uint64
	// EjectionsEnforcedTotal counts ejections carried out
	// (outlier_detection.ejections_enforced_total).
	EjectionsEnforcedTotal uint64
	// EjectionsOverflow counts ejections refused by max_ejection_percent
	// (outlier_detection.ejections_overflow).
	EjectionsOverflow uint64
	// Detected and Enforced count, by EjectionType, the thresholds reached
	// and the ejections carried out
	// (outlier_detection.ejections_detected_<type> and
	// outlier_detection.ejections_enforced_<type>).
	Detected, Enforced [numEjectionTypes]uint64
}

// Stats returns the cluster's outlier statistics; the proxy's telemetry
// reads them when it is scraped. A nil Detector has none.
func (d *Detector) Stats() OutlierStats {
	if d == nil {
		return OutlierStats{}
	}
	d = d.lin.current.Load()
	l := d.lin
	s := OutlierStats{EjectionsEnforcedTotal: l.enforcedTotal.Load(), EjectionsOverflow: l.overflow.Load()}
	for t := range numEjectionTypes {
		s.Detected[t] = l.detected[t].Load()
		s.Enforced[t] = l.enforced[t].Load()
	}
	now := d.b.now().UnixNano()
	for i := range d.b.hosts {
		if d.b.hosts[i].ejectedAt(now) {
			s.EjectionsActive++
		}
	}
	return s
}

// Each calls f with every statistic under its Envoy name (without the
// cluster.<name>. prefix); gauge tells a gauge from a counter.
func (s OutlierStats) Each(f func(name string, value uint64, gauge bool)) {
	f("outlier_detection.ejections_active", s.EjectionsActive, true)
	f("outlier_detection.ejections_enforced_total", s.EjectionsEnforcedTotal, false)
	f("outlier_detection.ejections_overflow", s.EjectionsOverflow, false)
	for t := range numEjectionTypes {
		f("outlier_detection.ejections_detected_"+t.String(), s.Detected[t], false)
		f("outlier_detection.ejections_enforced_"+t.String(), s.Enforced[t], false)
	}
}

// Ejections returns how many times h has been ejected since the cluster
// first had outlier detection (Envoy's num_ejections), 0 for a host the
// detector does not have.
func (d *Detector) Ejections(h *Host) uint64 {
	if d == nil || h == nil {
		return 0
	}
	d = d.lin.current.Load()
	m := d.hosts[h.live]
	if m == nil {
		return 0
	}
	d.lin.mu.Lock()
	defer d.lin.mu.Unlock()
	return m.ejection
}
