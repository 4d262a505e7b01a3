package telemetry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricHBONELimit counts the times an HBONE bound refused a connection
// or a stream, or ended a connection, by the side it bit on and the name
// of the bound (the hbone package's Limit names).
const MetricHBONELimit = "ztunnel_hbone_limit_reached_total"

func newLimitMetric(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricHBONELimit,
		Help: "Times an HBONE limit refused a connection or stream, or ended a connection, by direction and limit",
	}, []string{"direction", "limit"})
	if err := reg.Register(v); err != nil {
		return nil, fmt.Errorf("register %s: %w", MetricHBONELimit, err)
	}
	return v, nil
}

// HBONELimit returns the function to hand an HBONE server (Inbound) or
// client pool (Outbound) as its OnLimit: it counts each limit reached.
func (t *Telemetry) HBONELimit(d Direction) func(limit string) {
	dir := d.String()
	return func(limit string) { t.limits.WithLabelValues(dir, limit).Inc() }
}
