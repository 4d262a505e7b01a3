package telemetry

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// DefaultLogBuffer is how many records the access log holds while its
// writer is slow; beyond that records are dropped and counted.
const DefaultLogBuffer = 4096

// entry is one access-log line: the keys and order of Istio's JSON access
// log (Envoy's command operators), plus the deciding policy and the peer's
// identity. Absent values are null, as in Envoy's JSON format.
type entry struct {
	StartTime              string  `json:"start_time"`
	RouteName              *string `json:"route_name"`
	Method                 *string `json:"method"`
	Path                   *string `json:"path"`
	Protocol               string  `json:"protocol"`
	ResponseCode           int     `json:"response_code"`
	ResponseFlags          string  `json:"response_flags"`
	BytesReceived          int64   `json:"bytes_received"`
	BytesSent              int64   `json:"bytes_sent"`
	Duration               int64   `json:"duration"`
	UserAgent              *string `json:"user_agent"`
	RequestID              *string `json:"request_id"`
	Authority              *string `json:"authority"`
	UpstreamHost           *string `json:"upstream_host"`
	UpstreamCluster        *string `json:"upstream_cluster"`
	DownstreamRemoteAddr   *string `json:"downstream_remote_address"`
	DownstreamPeerURISAN   *string `json:"downstream_peer_uri_san"`
	UpstreamPeerURISAN     *string `json:"upstream_peer_uri_san"`
	AuthorizationPolicy    *string `json:"authorization_policy"`
	DestinationServiceHost *string `json:"destination_service"`
}

// envoyTime is %START_TIME%'s default format.
const envoyTime = "2006-01-02T15:04:05.000Z"

func opt(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func newEntry(r *Record) entry {
	e := entry{
		StartTime:              r.Start.UTC().Format(envoyTime),
		RouteName:              opt(r.RouteName),
		Method:                 opt(r.Method),
		Path:                   opt(r.Path),
		Protocol:               r.Protocol,
		ResponseCode:           r.ResponseCode,
		ResponseFlags:          r.ResponseFlags,
		BytesReceived:          r.BytesReceived,
		BytesSent:              r.BytesSent,
		Duration:               r.Duration.Milliseconds(),
		UserAgent:              opt(r.UserAgent),
		RequestID:              opt(r.RequestID),
		Authority:              opt(r.Authority),
		UpstreamCluster:        opt(r.UpstreamCluster),
		DownstreamPeerURISAN:   opt(r.Source.Principal),
		UpstreamPeerURISAN:     opt(r.Destination.Principal),
		AuthorizationPolicy:    opt(r.PolicyName),
		DestinationServiceHost: opt(r.DestinationService),
	}
	if e.ResponseFlags == "" {
		e.ResponseFlags = "-"
	}
	if r.UpstreamHost.IsValid() {
		e.UpstreamHost = opt(r.UpstreamHost.String())
	}
	if r.Source.Addr.IsValid() {
		e.DownstreamRemoteAddr = opt(r.Source.Addr.String())
	}
	return e
}

// AccessLog is an Observer that writes one JSON line per record to a
// writer, off the request path: Observe only queues a copy of the record,
// and when the queue is full (the writer is slower than the traffic) the
// record is dropped and counted rather than slowing requests down.
type AccessLog struct {
	queue   chan Record
	dropped prometheus.Counter
	done    chan struct{}
	once    sync.Once
	// closed guards queue against Observe after Close.
	mu     sync.RWMutex
	closed bool
}

// NewAccessLog starts writing to w; buffer bounds the queue (default
// DefaultLogBuffer). The drop counter is registered with reg.
func NewAccessLog(w io.Writer, buffer int, reg prometheus.Registerer) (*AccessLog, error) {
	if buffer <= 0 {
		buffer = DefaultLogBuffer
	}
	l := &AccessLog{
		queue: make(chan Record, buffer),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "zmesh_waypoint_access_log_dropped_total",
			Help: "Access-log records dropped because the log's writer was slower than the traffic."}),
		done: make(chan struct{}),
	}
	if err := reg.Register(l.dropped); err != nil {
		return nil, err
	}
	go l.write(w)
	return l, nil
}

// Observe implements Observer.
func (l *AccessLog) Observe(r *Record) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	select {
	case l.queue <- *r:
	default:
		l.dropped.Inc()
	}
}

// Dropped is the number of records dropped so far.
func (l *AccessLog) Dropped() float64 {
	var m dto.Metric
	_ = l.dropped.Write(&m)
	return m.GetCounter().GetValue()
}

// Close writes what is queued and stops.
func (l *AccessLog) Close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.queue)
		l.mu.Unlock()
	})
	<-l.done
}

func (l *AccessLog) write(w io.Writer) {
	defer close(l.done)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for r := range l.queue {
		// A failing writer loses lines; the requests go on.
		_ = enc.Encode(newEntry(&r))
		if len(l.queue) == 0 {
			_ = bw.Flush()
		}
	}
	_ = bw.Flush()
}

// Multi is an Observer that hands each record to every observer in turn.
type Multi []Observer

func (m Multi) Observe(r *Record) {
	for _, o := range m {
		o.Observe(r)
	}
}
