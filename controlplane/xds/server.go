// Package xds serves the control plane's resources to proxies over gRPC
// delta ADS: ztunnel's istio.workload.Address and istio.security.
// Authorization today, Envoy types for waypoints later. It is built on
// go-control-plane's delta server and linear caches; what it adds is the
// diffing that makes a change send only the resources it touched, and the
// record of what every connected proxy has acknowledged (for /debug/syncz
// and `zmeshctl proxy-status`).
package xds

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type URLs served to ztunnel, wire-compatible with istiod's.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Server is a delta ADS server over a fixed set of resource types.
type Server struct {
	log     *slog.Logger
	caches  map[string]*cachev3.LinearCache
	ads     serverv3.Server
	metrics *metrics

	// setMu serialises Set calls; last is what each type holds, marshaled,
	// to tell changed resources from unchanged ones.
	setMu sync.Mutex
	last  map[string]map[string][]byte

	mu      sync.Mutex
	streams map[int64]*stream
	version map[string]pushInfo // per type: the cache version and when it was set
	gen     map[string]uint64
}

type pushInfo struct {
	version string
	at      time.Time
}

// New returns a server for types, registering its metrics with reg (nil:
// not registered).
func New(log *slog.Logger, reg prometheus.Registerer, typeURLs ...string) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		log:     log,
		caches:  map[string]*cachev3.LinearCache{},
		last:    map[string]map[string][]byte{},
		streams: map[int64]*stream{},
		version: map[string]pushInfo{},
		gen:     map[string]uint64{},
		metrics: newMetrics(reg),
	}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, t := range typeURLs {
		c := cachev3.NewLinearCache(t)
		s.caches[t] = c
		s.last[t] = map[string][]byte{}
		mux.Caches[t] = c
	}
	s.ads = serverv3.NewServer(context.Background(), mux, callbacks{s})
	return s
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Set makes resources the complete set of typeURL's resources, by name.
// Only those that differ from the previous Set (by their deterministic
// encoding) and those that disappeared are pushed. It returns how many
// resources it changed and removed.
func (s *Server) Set(typeURL string, resources map[string]proto.Message) (changed, removed int, err error) {
	cache, ok := s.caches[typeURL]
	if !ok {
		return 0, 0, fmt.Errorf("xds: type %s is not served", typeURL)
	}
	start := time.Now()
	s.setMu.Lock()
	defer s.setMu.Unlock()
	prev := s.last[typeURL]
	next := make(map[string][]byte, len(resources))
	update := map[string]types.Resource{}
	opts := proto.MarshalOptions{Deterministic: true}
	for name, m := range resources {
		b, err := opts.Marshal(m)
		if err != nil {
			return 0, 0, fmt.Errorf("xds: marshal %s %q: %w", typeURL, name, err)
		}
		next[name] = b
		if old, ok := prev[name]; !ok || !bytes.Equal(old, b) {
			update[name] = m
		}
	}
	var gone []string
	for name := range prev {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
		}
	}
	s.last[typeURL] = next
	if len(update) == 0 && len(gone) == 0 {
		return 0, 0, nil
	}
	if err := cache.UpdateResources(update, gone); err != nil {
		return 0, 0, fmt.Errorf("xds: update %s: %w", typeURL, err)
	}
	s.mu.Lock()
	// The linear cache counts its versions the same way: one per update.
	s.gen[typeURL]++
	s.version[typeURL] = pushInfo{version: strconv.FormatUint(s.gen[typeURL], 10), at: start}
	s.mu.Unlock()
	s.metrics.pushes.WithLabelValues(typeURL).Inc()
	s.metrics.resources.WithLabelValues(typeURL).Set(float64(len(next)))
	s.metrics.setDuration.WithLabelValues(typeURL).Observe(time.Since(start).Seconds())
	return len(update), len(gone), nil
}

// Resources returns the names of typeURL's current resources, sorted.
func (s *Server) Resources(typeURL string) []string {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	return slices.Sorted(maps.Keys(s.last[typeURL]))
}
