// Package admin serves the waypoint's operational HTTP endpoints: the admin
// server (loopback by default) with /config_dump in Envoy's shape, so that
// tools reading Envoy's config dump (zmeshctl proxy-config) read the
// waypoint's; the readiness server (/healthz/ready, 15021); and the metrics
// server (/stats/prometheus, 15020).
package admin

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/zmesh/zmesh/waypoint/config"
)

// Options are what the admin server shows.
type Options struct {
	// Snapshot returns the configuration in force, nil before the first.
	Snapshot func() *config.Snapshot
	// Ready reports whether the waypoint serves (has a configuration and
	// is not draining).
	Ready func() bool
	// Gatherer, if set, is also served at /stats/prometheus.
	Gatherer prometheus.Gatherer
}

// NewAdmin returns the admin server's handler: /config_dump, /ready and,
// with a Gatherer, /stats/prometheus.
func NewAdmin(o Options) (http.Handler, error) {
	if o.Snapshot == nil || o.Ready == nil {
		return nil, errors.New("admin: Snapshot and Ready are required")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		b, err := ConfigDump(o.Snapshot())
		if err != nil {
			http.Error(w, fmt.Sprintf("config dump: %v", err), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.Handle("GET /ready", readiness(o.Ready))
	if o.Gatherer != nil {
		mux.Handle("GET /stats/prometheus", metrics(o.Gatherer))
	}
	return mux, nil
}

// NewReadiness returns the readiness server's handler: /healthz/ready
// answers 200 while ready() holds, 503 otherwise.
func NewReadiness(ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /healthz/ready", readiness(ready))
	return mux
}

// NewMetrics returns the metrics server's handler: g at /stats/prometheus,
// the path Istio's proxies are scraped on, and at /metrics.
func NewMetrics(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /stats/prometheus", metrics(g))
	mux.Handle("GET /metrics", metrics(g))
	return mux
}

func readiness(ready func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
}

func metrics(g prometheus.Gatherer) http.Handler {
	// ContinueOnError: one broken collector must not blank the scrape.
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ConfigDump renders a snapshot's resources as Envoy's /config_dump:
// {"configs": [ListenersConfigDump, ClustersConfigDump,
// EndpointsConfigDump, RoutesConfigDump]}, each resource with its version.
// A nil snapshot dumps four empty sections.
func ConfigDump(s *config.Snapshot) ([]byte, error) {
	var (
		ls  = &adminv3.ListenersConfigDump{}
		cs  = &adminv3.ClustersConfigDump{}
		es  = &adminv3.EndpointsConfigDump{}
		rs  = &adminv3.RoutesConfigDump{}
		now = timestamppb.New(time.Now())
	)
	if s != nil {
		ls.VersionInfo, cs.VersionInfo = s.Version, s.Version
		each := func(typeURL string, f func(name, version string, a *anypb.Any)) error {
			res := s.Resources[typeURL]
			for _, name := range sortedNames(res) {
				a, err := anypb.New(res[name])
				if err != nil {
					return fmt.Errorf("%s %q: %w", typeURL, name, err)
				}
				f(name, s.Versions[typeURL][name], a)
			}
			return nil
		}
		err := errors.Join(
			each(config.TypeListener, func(name, v string, a *anypb.Any) {
				ls.DynamicListeners = append(ls.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
					Name: name, ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: v, Listener: a, LastUpdated: now}})
			}),
			each(config.TypeCluster, func(_, v string, a *anypb.Any) {
				cs.DynamicActiveClusters = append(cs.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: v, Cluster: a, LastUpdated: now})
			}),
			each(config.TypeAssignment, func(_, v string, a *anypb.Any) {
				es.DynamicEndpointConfigs = append(es.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{VersionInfo: v, EndpointConfig: a, LastUpdated: now})
			}),
			each(config.TypeRoute, func(_, v string, a *anypb.Any) {
				rs.DynamicRouteConfigs = append(rs.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: v, RouteConfig: a, LastUpdated: now})
			}),
		)
		if err != nil {
			return nil, err
		}
	}
	dump := &adminv3.ConfigDump{}
	for _, m := range []proto.Message{ls, cs, es, rs} {
		a, err := anypb.New(m)
		if err != nil {
			return nil, err
		}
		dump.Configs = append(dump.Configs, a)
	}
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(dump)
}

func sortedNames(m map[string]proto.Message) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
