package admin

import (
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewMetrics returns the handler of the metrics server: g's metrics in the
// Prometheus exposition format at /metrics, and at /stats/prometheus, the
// path Istio's sidecars and ztunnel are scraped on.
func NewMetrics(g prometheus.Gatherer) (http.Handler, error) {
	if g == nil {
		return nil, errors.New("new metrics handler: nil gatherer")
	}
	// ContinueOnError: one broken collector must not blank the whole
	// scrape, which would hide the connection metrics with it.
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /stats/prometheus", h)
	return mux, nil
}
