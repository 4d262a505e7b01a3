package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"

	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/config"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// closed is a channel that is closed.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// persistEvery spaces writes of the persisted config: a burst of pushes
// costs one write.
const persistEvery = time.Second

type xdsSetup struct {
	conn  grpc.ClientConnInterface
	node  *corev3.Node
	store *state.Store
	// statePath is where the config of the last sync is persisted; empty:
	// nowhere.
	statePath string
	log       *slog.Logger
}

// statePath is this node's persisted config in --state-dir. The node's
// name is in it so that ztunnels of several nodes sharing a directory (a
// test, a demo on one machine) never read each other's.
func statePath(f *flags) string {
	if f.stateDir == "" {
		return ""
	}
	return filepath.Join(f.stateDir, "xds-"+f.node+".pb")
}

// startXDS loads the config persisted at the last sync, if any, starts the
// xDS client and, once it has synced, persists the config at every change.
// configured is closed when there is a config to serve: at once when one
// was loaded, else at the first sync.
func startXDS(ctx context.Context, wg *sync.WaitGroup, s xdsSetup) (*xdsclient.Client, <-chan struct{}, error) {
	held := config.NewHeld()
	loaded := false
	if s.statePath != "" {
		if err := os.MkdirAll(filepath.Dir(s.statePath), 0o700); err != nil {
			return nil, nil, err
		}
		switch h, err := loadPersisted(s.statePath, s.store); {
		case err == nil:
			held, loaded = h, true
			snap := s.store.Snapshot()
			s.log.Info("serving the config persisted at the last sync until the control plane answers",
				"path", s.statePath, "workloads", len(snap.Workloads()), "services", len(snap.Services()), "policies", len(snap.Policies()))
		case errors.Is(err, fs.ErrNotExist):
		default:
			s.log.Error("persisted config not used; waiting for the control plane", "path", s.statePath, "reason", err.Error())
		}
	}
	cfg := xdsclient.Config{
		Conn: s.conn, Types: config.Types, Handler: config.XDSHandler{Store: s.store, Held: held, Release: config.NewMemoryRelease()}, Log: s.log, Node: s.node,
	}
	if loaded {
		cfg.Held = held.Versions()
	}
	c, err := xdsclient.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	configured := make(chan struct{})
	if loaded {
		close(configured)
	}
	wg.Go(func() { c.Run(ctx) })
	wg.Go(func() {
		select {
		case <-c.Synced():
		case <-ctx.Done():
			return
		}
		s.store.MarkSynced()
		if !loaded {
			close(configured)
		}
		if s.statePath != "" {
			persist(ctx, held, s.statePath, s.log)
		}
	})
	return c, configured, nil
}

// loadPersisted loads the persisted config into store, all or nothing.
func loadPersisted(path string, store *state.Store) (*config.Held, error) {
	h, err := config.LoadHeld(path)
	if err != nil {
		return nil, err
	}
	u, err := h.Update()
	if err != nil {
		return nil, err
	}
	if err := store.Replace(u); err != nil {
		return nil, err
	}
	return h, nil
}

// persist writes held to path now and after each change until ctx ends.
func persist(ctx context.Context, held *config.Held, path string, log *slog.Logger) {
	for {
		if err := held.Save(path); err != nil {
			log.Error("persist config", "path", path, "reason", err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(persistEvery):
		}
		select {
		case <-ctx.Done():
			return
		case <-held.Changed():
		}
	}
}

// xdsDemand asks the xDS client for addresses the proxy does not know, by
// Istio's on-demand name for an address, "network/ip". Without a client
// (--local-config) it asks nothing.
type xdsDemand struct {
	c atomic.Pointer[xdsclient.Client]
}

func (d *xdsDemand) DemandAddress(addr state.NetAddr) (release func()) {
	c := d.c.Load()
	if c == nil {
		return func() {}
	}
	return c.Demand(xdsclient.TypeAddress, addr.String())
}
