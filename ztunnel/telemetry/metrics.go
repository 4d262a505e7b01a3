package telemetry

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, as Istio's ztunnel exposes them.
const (
	MetricOpened   = "istio_tcp_connections_opened_total"
	MetricClosed   = "istio_tcp_connections_closed_total"
	MetricFailed   = "istio_tcp_connections_failed_total"
	MetricSent     = "istio_tcp_sent_bytes_total"
	MetricReceived = "istio_tcp_received_bytes_total"
)

// labelNames is Istio's label set for TCP metrics, in the order of the
// fields of labels. Istio adds locality labels (source_region, …) only when
// a workload has a locality; a Prometheus vector has one fixed label set, so
// they are left out here.
var labelNames = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

// labels is one label tuple. It is comparable so that it can key the series
// cache; its fields follow labelNames.
type labels struct {
	reporter                     string
	sourceWorkload               string
	sourceCanonicalService       string
	sourceCanonicalRevision      string
	sourceWorkloadNamespace      string
	sourcePrincipal              string
	sourceApp                    string
	sourceVersion                string
	sourceCluster                string
	destinationService           string
	destinationServiceNamespace  string
	destinationServiceName       string
	destinationWorkload          string
	destinationCanonicalService  string
	destinationCanonicalRevision string
	destinationWorkloadNamespace string
	destinationPrincipal         string
	destinationApp               string
	destinationVersion           string
	destinationCluster           string
	requestProtocol              string
	responseFlags                string
	connectionSecurityPolicy     string
}

const unknown = "unknown"

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// labelsFor maps a connection to its label tuple the way Istio's ztunnel
// does: app and version are the canonical name and revision, the source
// principal is reported only when it was proven by mTLS, and the
// destination principal is the identity the destination workload is
// expected to have.
func labelsFor(ci *ConnInfo, flags string) labels {
	l := labels{
		reporter:                     ci.Direction.reporter(),
		sourceWorkload:               orUnknown(ci.Src.Workload),
		sourceCanonicalService:       orUnknown(ci.Src.CanonicalName),
		sourceCanonicalRevision:      orUnknown(ci.Src.CanonicalRevision),
		sourceWorkloadNamespace:      orUnknown(ci.Src.Namespace),
		sourcePrincipal:              unknown,
		sourceApp:                    orUnknown(ci.Src.CanonicalName),
		sourceVersion:                orUnknown(ci.Src.CanonicalRevision),
		sourceCluster:                orUnknown(ci.Src.Cluster),
		destinationService:           orUnknown(ci.Dst.Service),
		destinationServiceNamespace:  orUnknown(ci.Dst.ServiceNamespace),
		destinationServiceName:       orUnknown(ci.Dst.ServiceName),
		destinationWorkload:          orUnknown(ci.Dst.Workload),
		destinationCanonicalService:  orUnknown(ci.Dst.CanonicalName),
		destinationCanonicalRevision: orUnknown(ci.Dst.CanonicalRevision),
		destinationWorkloadNamespace: orUnknown(ci.Dst.Namespace),
		destinationPrincipal:         orUnknown(ci.Dst.Identity),
		destinationApp:               orUnknown(ci.Dst.CanonicalName),
		destinationVersion:           orUnknown(ci.Dst.CanonicalRevision),
		destinationCluster:           orUnknown(ci.Dst.Cluster),
		requestProtocol:              "tcp",
		responseFlags:                flags,
		connectionSecurityPolicy:     "unknown",
	}
	if ci.Secure {
		l.sourcePrincipal = orUnknown(ci.Src.Identity)
		l.connectionSecurityPolicy = "mutual_tls"
	}
	return l
}

func (l *labels) values() []string {
	return []string{
		l.reporter,
		l.sourceWorkload,
		l.sourceCanonicalService,
		l.sourceCanonicalRevision,
		l.sourceWorkloadNamespace,
		l.sourcePrincipal,
		l.sourceApp,
		l.sourceVersion,
		l.sourceCluster,
		l.destinationService,
		l.destinationServiceNamespace,
		l.destinationServiceName,
		l.destinationWorkload,
		l.destinationCanonicalService,
		l.destinationCanonicalRevision,
		l.destinationWorkloadNamespace,
		l.destinationPrincipal,
		l.destinationApp,
		l.destinationVersion,
		l.destinationCluster,
		l.requestProtocol,
		l.responseFlags,
		l.connectionSecurityPolicy,
	}
}

// series holds the counters of one label tuple, bound once so that a
// connection costs atomic adds rather than a label lookup per metric.
// Which counters are bound depends on the tuple: as in Istio, a connection
// is opened and moves bytes under response_flags "-", and only its close
// (and failure) carries the final flag. Binding only those keeps empty
// series such as opened{response_flags="DENY"} 0 out of the scrape.
type series struct {
	opened, closed, failed, sent, received prometheus.Counter
}

type metrics struct {
	opened, closed, failed, sent, received *prometheus.CounterVec

	// The cache grows with the distinct label tuples seen, exactly as the
	// vectors behind it do; neither forgets a workload that went away.
	// A map under a RWMutex rather than a sync.Map: looking a struct key
	// up in a sync.Map boxes it, which is an allocation per connection.
	mu    sync.RWMutex
	cache map[labels]*series
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labelNames)
	}
	m := &metrics{
		opened:   vec(MetricOpened, "The total number of TCP connections opened"),
		closed:   vec(MetricClosed, "The total number of TCP connections closed"),
		failed:   vec(MetricFailed, "The total number of TCP connections that failed to establish (unstable)"),
		sent:     vec(MetricSent, "The size of total bytes sent during response in case of a TCP connection"),
		received: vec(MetricReceived, "The size of total bytes received during request in case of a TCP connection"),
		cache:    make(map[labels]*series),
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.failed, m.sent, m.received} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register tcp metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) series(l *labels) *series {
	m.mu.RLock()
	s := m.cache[*l]
	m.mu.RUnlock()
	if s != nil {
		return s
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.cache[*l]; s != nil {
		return s
	}
	v := l.values()
	s = &series{closed: m.closed.WithLabelValues(v...)}
	if l.responseFlags == FlagNone {
		s.opened = m.opened.WithLabelValues(v...)
		s.sent = m.sent.WithLabelValues(v...)
		s.received = m.received.WithLabelValues(v...)
	} else {
		s.failed = m.failed.WithLabelValues(v...)
	}
	m.cache[*l] = s
	return s
}
