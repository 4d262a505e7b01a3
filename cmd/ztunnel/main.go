// Command ztunnel is zmesh's per-node L4 proxy: it takes the node's ambient
// pods from the CNI agent over ZDS, opens their listeners inside their
// network namespaces, tunnels their traffic over HBONE, enforces L4 policy
// and reports L4 metrics and access logs. Its config comes from zmeshd over
// delta xDS, or from a local YAML file (--local-config).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/internal/meshclient"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/admin"
	"github.com/zmesh/zmesh/ztunnel/config"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

type flags struct {
	node, network, trustDomain        string
	zdsSocket                         string
	localConfig                       string
	xdsAddr, caAddr                   string
	rootCert, tokenFile               string
	plaintextControlPlane             bool
	adminAddr, metricsAddr, readyAddr string
	grace                             time.Duration
	logLevel                          string
	hbone                             hbone.Limits
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.StringVar(&f.node, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&f.network, "network", "", "this node's network (multi-network meshes)")
	fs.StringVar(&f.trustDomain, "trust-domain", identity.DefaultTrustDomain, "the mesh's trust domain")
	fs.StringVar(&f.zdsSocket, "zds-socket", "/var/run/ztunnel/ztunnel.sock", "the node agent's ZDS socket")
	fs.StringVar(&f.localConfig, "local-config", "", "YAML file of workloads, services and policies (instead of xDS)")
	fs.StringVar(&f.xdsAddr, "xds-address", "", "zmeshd's gRPC address for delta xDS")
	fs.StringVar(&f.caAddr, "ca-address", "", "the certificate service's gRPC address (default: --xds-address)")
	fs.StringVar(&f.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM roots of the mesh: verifies peers and the control plane")
	fs.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/tokens/istio-token", "bearer token presented to the control plane (re-read on each use)")
	fs.BoolVar(&f.plaintextControlPlane, "plaintext-control-plane", false, "talk to the control plane without TLS (loopback demos only)")
	fs.StringVar(&f.adminAddr, "admin-address", "127.0.0.1:15000", "admin endpoint (config_dump, pprof, logging)")
	fs.StringVar(&f.metricsAddr, "metrics-address", ":15020", "Prometheus endpoint")
	fs.StringVar(&f.readyAddr, "readiness-address", ":15021", "readiness endpoint (/healthz/ready)")
	fs.DurationVar(&f.grace, "drain-grace", 30*time.Second, "how long live connections may run on after SIGTERM or a pod's removal")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	hl := hbone.DefaultLimits()
	fs.DurationVar(&f.hbone.IdleTimeout, "hbone-idle-timeout", hl.IdleTimeout, "close an inbound HBONE connection with no stream for this long")
	fs.IntVar(&f.hbone.MaxConnsPerPeer, "hbone-max-conns-per-peer", hl.MaxConnsPerPeer, "inbound HBONE connections one peer identity may hold on one pod")
	fs.IntVar(&f.hbone.MaxStreamsPerPeer, "hbone-max-streams-per-peer", hl.MaxStreamsPerPeer, "inbound HBONE streams one peer identity may hold on one pod")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case f.hbone.IdleTimeout <= 0:
		return nil, fmt.Errorf("--hbone-idle-timeout: %s is not positive", f.hbone.IdleTimeout)
	case f.hbone.MaxConnsPerPeer <= 0:
		return nil, fmt.Errorf("--hbone-max-conns-per-peer: %d is not positive", f.hbone.MaxConnsPerPeer)
	case f.hbone.MaxStreamsPerPeer <= 0:
		return nil, fmt.Errorf("--hbone-max-streams-per-peer: %d is not positive", f.hbone.MaxStreamsPerPeer)
	}
	if f.node == "" {
		return nil, errors.New("--node: empty (and $NODE_NAME unset)")
	}
	if (f.localConfig == "") == (f.xdsAddr == "") {
		return nil, errors.New("give exactly one of --local-config and --xds-address")
	}
	if f.caAddr == "" {
		f.caAddr = f.xdsAddr
	}
	if f.caAddr == "" {
		return nil, errors.New("--ca-address: needed with --local-config (certificates always come from the CA)")
	}
	return f, nil
}

func main() {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f *flags) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", f.node)
	slog.SetDefault(log)

	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	roots, err := meshclient.LoadBundle(td, f.rootCert, log)
	if err != nil {
		return fmt.Errorf("--root-cert: %w", err)
	}
	mc, err := meshclient.New(meshclient.Config{
		XDSAddr: f.xdsAddr, CAAddr: f.caAddr, Roots: roots, Plaintext: f.plaintextControlPlane,
		Token: meshclient.TokenFile(f.tokenFile), Log: log,
	})
	if err != nil {
		return err
	}
	defer mc.Close()
	certs := mc.Certs

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tel, err := telemetry.New(reg, log)
	if err != nil {
		return err
	}
	store := state.NewStore()
	px, err := proxy.New(proxy.Config{
		Node: f.node, Network: f.network, TrustDomain: td, State: store, Certs: certs,
		Telemetry: tel, Log: log, Grace: f.grace, HBONELimits: f.hbone,
	})
	if err != nil {
		return err
	}

	ready := &admin.Ready{}
	configReady := ready.Register("config")
	podsReady := ready.Register("node-pods")
	var wg sync.WaitGroup
	defer wg.Wait()
	// Everything but the data path stops with this context; the data path
	// drains first.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()
	wg.Go(func() { certs.Run(bg) })

	var xdsClient *xdsclient.Client
	if f.localConfig != "" {
		first := make(chan error, 1)
		wg.Go(func() {
			err := config.WatchFile(bg, f.localConfig, store, time.Second, log, func() { configReady.Done() })
			first <- err
		})
		// A file that does not load at start is fatal: there is no last
		// good config to serve.
		select {
		case err := <-first:
			if err != nil {
				cancelBG()
				return fmt.Errorf("--local-config: %w", err)
			}
		case <-store.Changed():
		}
	} else {
		meta, _ := structpb.NewStruct(map[string]any{"NODE_NAME": f.node, "NETWORK": f.network})
		xdsClient, err = xdsclient.NewClient(xdsclient.Config{
			Conn: mc.XDS, Types: config.Types, Handler: config.XDSHandler{Store: store}, Log: log,
			Node: &corev3.Node{Id: "ztunnel~" + f.node, Metadata: meta},
		})
		if err != nil {
			return err
		}
		wg.Go(func() { xdsClient.Run(bg) })
		wg.Go(func() {
			select {
			case <-xdsClient.Synced():
				configReady.Done()
			case <-bg.Done():
			}
		})
	}

	zctx, stopZDS := context.WithCancel(bg)
	defer stopZDS()
	wg.Go(func() { inpod.RunZDS(zctx, f.zdsSocket, readyOnReconcile{px, podsReady}, log) })

	dump := func() any { return configDump(store.Snapshot(), px, certs, xdsClient) }
	adminH, err := admin.NewAdmin(dump, level)
	if err != nil {
		return err
	}
	metricsH, err := admin.NewMetrics(reg)
	if err != nil {
		return err
	}
	for _, srv := range []struct {
		name, addr string
		serve      func(net.Listener) error
	}{
		{"--admin-address", f.adminAddr, func(ln net.Listener) error { return admin.Serve(bg, ln, adminH) }},
		{"--metrics-address", f.metricsAddr, func(ln net.Listener) error { return admin.Serve(bg, ln, metricsH) }},
		{"--readiness-address", f.readyAddr, func(ln net.Listener) error { return admin.Serve(bg, ln, ready.Handler()) }},
	} {
		ln, err := net.Listen("tcp", srv.addr)
		if err != nil {
			cancelBG()
			return fmt.Errorf("%s: %w", srv.name, err)
		}
		wg.Go(func() {
			if err := srv.serve(ln); err != nil {
				log.Error("server failed", "listener", srv.name, "reason", err.Error())
			}
		})
	}
	log.Info("ztunnel started", "zds", f.zdsSocket, "admin", f.adminAddr, "metrics", f.metricsAddr, "readiness", f.readyAddr)

	<-ctx.Done()
	log.Info("draining", "grace", f.grace.String())
	stopZDS()
	dctx, cancel := context.WithTimeout(context.Background(), f.grace)
	defer cancel()
	px.Drain(dctx)
	cancelBG()
	log.Info("drained")
	return nil
}

// readyOnReconcile marks the node's pods ready once the agent's first
// snapshot has been taken in.
type readyOnReconcile struct {
	*proxy.Proxy
	b *admin.Blocker
}

func (r readyOnReconcile) Reconcile(ctx context.Context, keep map[string]bool) error {
	err := r.Proxy.Reconcile(ctx, keep)
	r.b.Done()
	return err
}

// configDump is what /config_dump shows and zmeshctl reads.
func configDump(snap *state.Snapshot, px *proxy.Proxy, certs *identity.Manager, xc *xdsclient.Client) any {
	var xs *xdsclient.Status
	if xc != nil {
		st := xc.Status()
		xs = &st
	}
	return admin.NewConfigDump(snap, px.Pods(), certs.Certificates(), xs)
}
