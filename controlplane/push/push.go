// Package push turns a source's snapshots into xDS pushes: it debounces
// bursts of changes, translates the newest snapshot (incrementally: an
// unchanged pod keeps its translation and its encoding), hands each
// type's resources to the xDS server (which sends proxies only what
// changed), builds each waypoint Gateway's Envoy resources once per
// snapshot (its view, shared by the waypoint's replicas), and reports
// each object's status conditions.
package push

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/controlplane/xds"
)

// Reporter receives the status conditions of every translation; it
// writes them to the objects (Kubernetes) or logs them (files).
type Reporter interface {
	Report(ctx context.Context, conditions []translate.Condition)
}

// Pipeline is the loop from snapshots to proxies.
type Pipeline struct {
	XDS      *xds.Server
	Options  translate.Options
	Reporter Reporter
	Log      *slog.Logger
	// Debounce is how long the pipeline waits for a burst of changes to
	// end before translating (default 10ms); MaxDelay bounds that wait
	// under a steady stream of changes (default 100ms).
	Debounce, MaxDelay time.Duration
	// Waypoints makes the pipeline build every waypoint's Envoy resources
	// (the xDS server must serve xds.EnvoyTypes as views); RouteReporter,
	// if set, gets their problems.
	Waypoints     bool
	RouteReporter RouteReporter
	// JWKS resolves RequestAuthentication jwksUris for the waypoints.
	JWKS l7.JWKSResolver
	// Registry gets the pipeline's metrics; nil: not registered.
	Registry prometheus.Registerer

	// translator is only used by Run's goroutine.
	translator translate.Incremental

	mu      sync.Mutex
	next    *model.Snapshot
	changed time.Time // when next was first set since the last translation
	wake    chan struct{}
	once    sync.Once

	pushed  atomic.Bool
	metrics *metrics
}

// Update hands the pipeline a new snapshot; it never blocks. Only the
// newest snapshot is translated.
func (p *Pipeline) Update(s *model.Snapshot) {
	p.init()
	p.mu.Lock()
	if p.next == nil {
		p.changed = time.Now()
	}
	p.next = s
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Pushed is true once a first snapshot has been translated and handed to
// the xDS server: the control plane is ready to serve.
func (p *Pipeline) Pushed() bool { return p.pushed.Load() }

func (p *Pipeline) init() {
	p.once.Do(func() {
		p.wake = make(chan struct{}, 1)
		if p.Debounce <= 0 {
			p.Debounce = 10 * time.Millisecond
		}
		if p.MaxDelay <= 0 {
			p.MaxDelay = 100 * time.Millisecond
		}
		if p.Log == nil {
			p.Log = slog.Default()
		}
		p.metrics = newMetrics(p.Registry)
	})
}

// Run translates and pushes until ctx ends.
func (p *Pipeline) Run(ctx context.Context) {
	p.init()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		// Debounce: wait until no update came for Debounce, or MaxDelay
		// passed since the first one.
		for {
			p.mu.Lock()
			first := p.changed
			p.mu.Unlock()
			wait := min(p.Debounce, time.Until(first.Add(p.MaxDelay)))
			if wait <= 0 {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			case <-time.After(wait):
			}
			break
		}
		p.mu.Lock()
		snap, since := p.next, p.changed
		p.next = nil
		p.mu.Unlock()
		if snap != nil {
			p.push(ctx, snap, since)
		}
	}
}

func (p *Pipeline) push(ctx context.Context, snap *model.Snapshot, since time.Time) {
	start := time.Now()
	out := p.translator.Translate(p.Options, snap)
	translated := time.Since(start)
	addrs, addrGone, err := p.XDS.Set(xds.TypeAddress, asMessages(out.Addresses))
	if err != nil {
		p.Log.Error("push addresses", "error", err)
		return
	}
	pols, polGone, err := p.XDS.Set(xds.TypeAuthorization, asMessages(out.Authorizations))
	if err != nil {
		p.Log.Error("push authorizations", "error", err)
		return
	}
	p.pushViews(ctx, snap)
	p.pushed.Store(true)
	p.metrics.translate.Observe(translated.Seconds())
	p.metrics.changeToPush.Observe(time.Since(since).Seconds())
	failed := 0
	for _, c := range out.Conditions {
		if !c.Status {
			failed++
		}
	}
	p.metrics.configErrors.Set(float64(failed))
	if addrs+addrGone+pols+polGone > 0 {
		p.Log.Info("pushed", "addresses", len(out.Addresses), "changed", addrs, "removed", addrGone,
			"authorizations", len(out.Authorizations), "policiesChanged", pols, "policiesRemoved", polGone,
			"translate", translated.Round(time.Microsecond), "sinceChange", time.Since(since).Round(time.Microsecond))
	}
	if p.Reporter != nil {
		p.Reporter.Report(ctx, out.Conditions)
	}
}

func asMessages[M proto.Message](in map[string]M) map[string]proto.Message {
	out := make(map[string]proto.Message, len(in))
	maps.Insert(out, func(yield func(string, proto.Message) bool) {
		for k, v := range in {
			if !yield(k, v) {
				return
			}
		}
	})
	return out
}

type metrics struct {
	translate, changeToPush prometheus.Histogram
	configErrors            prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		translate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "zmeshd_translate_seconds", Help: "Time to translate a snapshot into proxy config.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		changeToPush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "zmeshd_change_to_push_seconds", Help: "Time from a config change reaching zmeshd to its resources being handed to the xDS server (debounce included).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12),
		}),
		configErrors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zmeshd_config_errors", Help: "Objects whose status carries a failed condition after the last translation.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.translate, m.changeToPush, m.configErrors)
	}
	return m
}
