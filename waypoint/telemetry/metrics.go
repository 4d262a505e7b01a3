package telemetry

import (
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Istio's standard metric label names, in the order of its stats plugin.
var httpLabels = httpLabelsArray[:]

// responseCodeIndex is where response_code and grpc_response_status sit
// in httpLabels.
const responseCodeIndex = 21

// tcpLabels are httpLabels without response_code and grpc_response_status,
// as Istio's TCP metrics.
var tcpLabels = append(httpLabels[:responseCodeIndex:responseCodeIndex], httpLabels[responseCodeIndex+2:]...)

// Istio's default histogram buckets: durations in milliseconds, sizes in
// bytes.
var (
	DurationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	SizeBuckets     = []float64{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000}
)

const (
	// Reporter is the reporter label of everything a waypoint reports.
	Reporter = "waypoint"
	unknown  = "unknown"
	// overflow replaces the source labels of a source beyond MaxSources.
	overflow = "overflow"
	// maxLabelLen bounds one label value (a DNS name's length): a longer
	// value is cut.
	maxLabelLen = 253
	// DefaultMaxSources is how many distinct sources get their own series.
	DefaultMaxSources = 1000
)

// MetricsOptions configure Metrics.
type MetricsOptions struct {
	// Cluster is the mesh's cluster ID for source_cluster and
	// destination_cluster; default "Kubernetes", Istio's.
	Cluster string
	// MaxSources bounds the distinct sources (workload, namespace,
	// principal, app, version) that get series of their own; later ones
	// are counted under source labels "overflow". Default
	// DefaultMaxSources.
	MaxSources int
}

// Metrics is an Observer that keeps Istio's standard metrics.
//
// Label cardinality: destination labels come from zmeshd's configuration
// and the response code from net/http (three digits), so they are bounded
// by the mesh. What a source controls is bounded here: each value is cut to
// 253 bytes and made valid UTF-8, grpc_response_status is a status code
// 0–16 or "unknown", and at most MaxSources distinct sources get their own
// series: a client cannot grow the waypoint's memory or its scrape by
// varying what it presents.
type Metrics struct {
	cluster    string
	maxSources int

	requests                *prometheus.CounterVec
	duration, reqBytes, rsp *prometheus.HistogramVec
	tcpSent, tcpRecv        *prometheus.CounterVec
	tcpClosed               *prometheus.CounterVec
	overflowed              prometheus.Counter

	mu      sync.Mutex
	sources map[source]bool

	// series caches each HTTP label set's four metrics, so that a request
	// whose labels were seen before finds them with one map lookup rather
	// than prometheus hashing and checking its 25 values for each metric.
	// It holds what the vectors hold already, at most maxSeries of them.
	seriesMu  sync.RWMutex
	series    map[labelValues]*httpSeries
	maxSeries int
}

// labelValues are a request's values of httpLabels, in order.
type labelValues [len(httpLabelsArray)]string

var httpLabelsArray = [...]string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// httpSeries is one HTTP label set's metrics.
type httpSeries struct {
	requests                prometheus.Counter
	duration, reqBytes, rsp prometheus.Observer
}

// defaultMaxSeries bounds Metrics.series; label sets beyond it are looked
// up in the vectors each time.
const defaultMaxSeries = 10000

// source is one side's labels.
type source struct {
	workload, namespace, principal, app, version string
	canonicalService, canonicalRevision, cluster string
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer, o MetricsOptions) (*Metrics, error) {
	if o.Cluster == "" {
		o.Cluster = "Kubernetes"
	}
	if o.MaxSources <= 0 {
		o.MaxSources = DefaultMaxSources
	}
	m := &Metrics{
		cluster: o.Cluster, maxSources: o.MaxSources, sources: map[source]bool{}, series: map[labelValues]*httpSeries{}, maxSeries: defaultMaxSeries,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total",
			Help: "Requests handled by the waypoint."}, httpLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help: "Request durations in milliseconds.", Buckets: DurationBuckets}, httpLabels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes",
			Help: "Request body sizes in bytes.", Buckets: SizeBuckets}, httpLabels),
		rsp: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes",
			Help: "Response body sizes in bytes.", Buckets: SizeBuckets}, httpLabels),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "Bytes sent to clients over TCP connections forwarded without HTTP."}, tcpLabels),
		tcpRecv: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "Bytes received from clients over TCP connections forwarded without HTTP."}, tcpLabels),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "TCP connections forwarded without HTTP that have closed."}, tcpLabels),
		overflowed: prometheus.NewCounter(prometheus.CounterOpts{Name: "zmesh_waypoint_telemetry_source_overflow_total",
			Help: "Records whose source labels were replaced by \"overflow\" because MaxSources distinct sources were already labelled."}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.rsp, m.tcpSent, m.tcpRecv, m.tcpClosed, m.overflowed} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observe implements Observer.
func (m *Metrics) Observe(r *Record) {
	src := m.source(r.Source)
	dst := m.peer(r.Destination)
	// In httpLabels' order; the TCP metrics take the same values without
	// response_code and grpc_response_status.
	lv := labelValues{
		Reporter,
		src.workload, src.canonicalService, src.canonicalRevision, src.namespace,
		src.principal, src.app, src.version, src.cluster,
		dst.workload, dst.namespace, dst.principal, dst.app,
		dst.version, value(r.DestinationService), value(r.DestinationServiceName), value(r.DestinationServiceNamespace),
		dst.canonicalService, dst.canonicalRevision, dst.cluster,
		protocol(r), responseCode(r.ResponseCode), grpcStatus(r.GRPCStatus), flags(r.ResponseFlags),
		// The tunnel from the client and the one to the endpoint are
		// both mutual TLS; the waypoint serves nothing else.
		"mutual_tls",
	}
	if r.Protocol == "TCP" {
		tv := append(lv[:responseCodeIndex:responseCodeIndex], lv[responseCodeIndex+2:]...)
		m.tcpSent.WithLabelValues(tv...).Add(float64(max(r.BytesSent, 0)))
		m.tcpRecv.WithLabelValues(tv...).Add(float64(max(r.BytesReceived, 0)))
		m.tcpClosed.WithLabelValues(tv...).Inc()
		return
	}
	s := m.httpSeries(&lv)
	s.requests.Inc()
	s.duration.Observe(float64(r.Duration.Microseconds()) / 1000)
	s.reqBytes.Observe(float64(max(r.BytesReceived, 0)))
	s.rsp.Observe(float64(max(r.BytesSent, 0)))
}

// httpSeries returns the metrics of the label set lv.
func (m *Metrics) httpSeries(lv *labelValues) *httpSeries {
	m.seriesMu.RLock()
	s := m.series[*lv]
	m.seriesMu.RUnlock()
	if s != nil {
		return s
	}
	s = &httpSeries{
		requests: m.requests.WithLabelValues(lv[:]...),
		duration: m.duration.WithLabelValues(lv[:]...),
		reqBytes: m.reqBytes.WithLabelValues(lv[:]...),
		rsp:      m.rsp.WithLabelValues(lv[:]...),
	}
	m.seriesMu.Lock()
	if len(m.series) < m.maxSeries {
		m.series[*lv] = s
	}
	m.seriesMu.Unlock()
	return s
}

// responseCodes are the label values of the three-digit status codes.
var responseCodes = func() (c [900]string) {
	for i := range c {
		c[i] = strconv.Itoa(100 + i)
	}
	return c
}()

// responseCode is the response_code label value of code.
func responseCode(code int) string {
	if code >= 100 && code < 1000 {
		return responseCodes[code-100]
	}
	return strconv.Itoa(code)
}

// peer is p's labels: values cut and cleaned, the canonical names derived
// when p does not carry them, and the mesh's cluster when p names none.
func (m *Metrics) peer(p Peer) source {
	s := source{workload: value(p.Workload), namespace: value(p.Namespace), principal: value(p.Principal),
		app: value(p.App), version: value(p.Version), cluster: value(p.Cluster)}
	s.canonicalService, s.canonicalRevision = value(p.CanonicalService), value(p.CanonicalRevision)
	if p.CanonicalService == "" {
		s.canonicalService = canonicalService(s.app, s.workload)
	}
	if p.CanonicalRevision == "" {
		s.canonicalRevision = canonicalRevision(s.version)
	}
	if p.Cluster == "" {
		s.cluster = m.cluster
	}
	return s
}

// source bounds the source labels: values cut and cleaned, and sources
// beyond maxSources folded into one.
func (m *Metrics) source(p Peer) source {
	s := m.peer(p)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sources[s] {
		return s
	}
	if len(m.sources) >= m.maxSources {
		m.overflowed.Inc()
		// The cluster is the mesh's, bounded whatever the source says.
		return source{overflow, overflow, overflow, overflow, overflow, overflow, overflow, m.cluster}
	}
	m.sources[s] = true
	return s
}

// value is a label value: "unknown" when empty, valid UTF-8, at most
// maxLabelLen bytes.
func value(v string) string {
	if v == "" {
		return unknown
	}
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "\uFFFD")
	}
	if len(v) > maxLabelLen {
		v = v[:maxLabelLen]
		for !utf8.ValidString(v) {
			v = v[:len(v)-1]
		}
	}
	return v
}

// canonicalService is Istio's: the app label, else the workload name.
func canonicalService(app, workload string) string {
	if app != unknown {
		return app
	}
	return workload
}

// canonicalRevision is Istio's: the version label, else "latest".
func canonicalRevision(version string) string {
	if version == unknown {
		return "latest"
	}
	return version
}

// protocol is request_protocol: "grpc" for a request answered with a
// grpc-status, "tcp" for a connection forwarded without HTTP, else "http"
// (HTTP/1.1 and HTTP/2 alike, as Istio reports them).
func protocol(r *Record) string {
	switch {
	case r.Protocol == "TCP":
		return "tcp"
	case r.GRPCStatus != "":
		return "grpc"
	}
	return "http"
}

func flags(f string) string {
	if f == "" {
		return "-"
	}
	return value(f)
}

// grpcStatus accepts the status codes gRPC defines (0–16); the upstream
// could send anything else.
func grpcStatus(s string) string {
	if s == "" {
		return ""
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 16 && strconv.Itoa(n) == s {
		return s
	}
	return unknown
}
