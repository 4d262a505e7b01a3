// Command ztunnel is zmesh's per-node L4 proxy: it takes the node's ambient
// pods from the CNI agent over ZDS, opens their listeners inside their
// network namespaces, tunnels their traffic over HBONE, enforces L4 policy
// and reports L4 metrics and access logs. Its config comes from zmeshd over
// delta xDS, or from a local YAML file (--local-config).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/internal/httpserve"
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
	stateDir                          string
	meshCIDRs                         []netip.Prefix
	// This ztunnel's own pod, for its xDS node.
	podName, podNamespace, clusterID string
	instanceIPs                      []netip.Addr
	hbone                            hbone.Limits
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
	fs.StringVar(&f.stateDir, "state-dir", "/var/run/ztunnel/state", "node-local directory where the config of the last xDS sync is kept, to serve from after a restart while the control plane is down (empty: keep nothing)")
	fs.StringVar(&f.podName, "pod-name", cmp.Or(os.Getenv("POD_NAME"), hostname()), "this ztunnel's pod name, for its xDS node (default $POD_NAME, else the hostname)")
	fs.StringVar(&f.podNamespace, "pod-namespace", cmp.Or(os.Getenv("POD_NAMESPACE"), "zmesh-system"), "this ztunnel's pod namespace, for its xDS node (default $POD_NAMESPACE, else zmesh-system)")
	fs.StringVar(&f.clusterID, "cluster-id", cmp.Or(os.Getenv("CLUSTER_ID"), "Kubernetes"), "the cluster's id, for the xDS node (default $CLUSTER_ID, else Kubernetes)")
	meshCIDRs := fs.String("mesh-cidrs", "", "the cluster's pod and service CIDRs, comma-separated: an outbound connection to an unknown address in them waits (up to 1 s) for the control plane to name it, and is refused if it does not (default: the /24 or /64 around every known workload and service address)")
	instanceIPs := fs.String("instance-ip", os.Getenv("INSTANCE_IP"), "this ztunnel's pod IPs, comma-separated, for its xDS node (default $INSTANCE_IP, else this host's global unicast addresses)")
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
	for _, c := range strings.Split(*meshCIDRs, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("--mesh-cidrs: %q is not a CIDR", c)
		}
		f.meshCIDRs = append(f.meshCIDRs, p)
	}
	ips, err := parseIPs(*instanceIPs)
	if err != nil {
		return nil, fmt.Errorf("--instance-ip: %w", err)
	}
	if f.instanceIPs = ips; len(ips) == 0 {
		f.instanceIPs = hostIPs()
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
	mc, err := meshclient.Open(td, f.rootCert, f.tokenFile, meshclient.Config{
		XDSAddr: f.xdsAddr, CAAddr: f.caAddr, Plaintext: f.plaintextControlPlane, Log: log,
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
	store.SetMeshCIDRs(f.meshCIDRs)
	demand := &xdsDemand{}
	px, err := proxy.New(proxy.Config{
		Node: f.node, Network: f.network, TrustDomain: td, State: store, Certs: certs,
		Telemetry: tel, Log: log, Grace: f.grace, Demand: demand, HBONELimits: f.hbone,
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
	// configured is closed once there is a config to serve pods with.
	var configured <-chan struct{}
	if f.localConfig != "" {
		configured = closed
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
		node, err := xdsNode(podInfo{
			name: f.podName, namespace: f.podNamespace, ips: f.instanceIPs,
			node: f.node, cluster: f.clusterID, network: f.network,
		})
		if err != nil {
			cancelBG()
			return err
		}
		xdsClient, configured, err = startXDS(bg, &wg, xdsSetup{
			conn: mc.XDS, node: node, store: store, statePath: statePath(f), log: log,
		})
		if err != nil {
			cancelBG()
			return err
		}
		demand.c.Store(xdsClient)
		wg.Go(func() {
			select {
			case <-configured:
				configReady.Done()
			case <-bg.Done():
			}
		})
	}

	zctx, stopZDS := context.WithCancel(bg)
	defer stopZDS()
	// Pods are taken over (from the agent, and so from a ztunnel being
	// replaced) only once there is a config to serve them with: the first
	// sync, or the one persisted at the last sync. Before that a pod's
	// traffic stays with the ztunnel that has one, or, for a new pod, the
	// pod waits in CNI ADD.
	wg.Go(func() {
		select {
		case <-configured:
		case <-zctx.Done():
			return
		}
		inpod.RunZDS(zctx, f.zdsSocket, readyOnReconcile{px, podsReady}, log)
	})

	dump := func() any { return configDump(store.Snapshot(), px, certs, xdsClient) }
	adminH, err := admin.NewAdmin(dump, level)
	if err != nil {
		return err
	}
	metricsH, err := admin.NewMetrics(reg)
	if err != nil {
		return err
	}
	if err := httpserve.Start(bg, &wg, log,
		httpserve.Endpoint{Flag: "--admin-address", Addr: f.adminAddr, Handler: adminH},
		httpserve.Endpoint{Flag: "--metrics-address", Addr: f.metricsAddr, Handler: metricsH},
		httpserve.Endpoint{Flag: "--readiness-address", Addr: f.readyAddr, Handler: ready.Handler()},
	); err != nil {
		cancelBG()
		return err
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
