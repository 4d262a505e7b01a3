// Command waypoint is zmesh's L7 proxy for the services and workloads bound
// to an istio-waypoint Gateway: it terminates HBONE on 15008 with its own
// SVID, routes each request with the configuration zmeshd sends it over
// delta xDS (Envoy Listener, RouteConfiguration, Cluster and
// ClusterLoadAssignment), and forwards it over HBONE to the chosen
// endpoint. It runs as the deployer creates it: root certificate and token
// files from its volumes, its pod from the downward API.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/internal/httpserve"
	"github.com/zmesh/zmesh/internal/meshclient"
	"github.com/zmesh/zmesh/waypoint/admin"
	"github.com/zmesh/zmesh/waypoint/proxy"
	"github.com/zmesh/zmesh/waypoint/telemetry"
	"github.com/zmesh/zmesh/waypoint/xds"
)

type flags struct {
	xdsAddr, caAddr                                string
	rootCert, tokenFile                            string
	plaintextControlPlane                          bool
	trustDomain                                    string
	hboneAddr, adminAddr, metricsAddr, readyAddr   string
	drain                                          time.Duration
	logLevel, accessLog                            string
	podName, podNamespace, serviceAccount, cluster string
	instanceIPs                                    []netip.Addr
	upstreamHBONEPort                              uint
	hbone                                          hbone.Limits
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.StringVar(&f.xdsAddr, "xds-address", "", "zmeshd's gRPC address for delta xDS (required)")
	fs.StringVar(&f.caAddr, "ca-address", "", "the certificate service's gRPC address (default: --xds-address)")
	fs.StringVar(&f.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM roots of the mesh: verifies peers and the control plane")
	fs.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/tokens/istio-token", "bearer token presented to the control plane (re-read on each use)")
	fs.BoolVar(&f.plaintextControlPlane, "plaintext-control-plane", false, "talk to the control plane without TLS (loopback demos only)")
	fs.StringVar(&f.trustDomain, "trust-domain", identity.DefaultTrustDomain, "the mesh's trust domain")
	fs.StringVar(&f.hboneAddr, "hbone-address", ":15008", "where tunnels from clients' ztunnels arrive (HBONE)")
	fs.StringVar(&f.adminAddr, "admin-address", "127.0.0.1:15000", "admin endpoint (/config_dump, /ready, /stats/prometheus); keep it on loopback")
	fs.StringVar(&f.metricsAddr, "metrics-address", ":15020", "Prometheus endpoint (/stats/prometheus)")
	fs.StringVar(&f.readyAddr, "readiness-address", ":15021", "readiness endpoint (/healthz/ready)")
	fs.DurationVar(&f.drain, "drain-timeout", 25*time.Second, "how long requests in flight may run on after SIGTERM (within the pod's 30 s grace period)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.accessLog, "access-log", "-", "where the JSON access log goes: - for stdout, a file path, or empty for none")
	fs.StringVar(&f.podName, "pod-name", os.Getenv("POD_NAME"), "this waypoint's pod name (default $POD_NAME)")
	fs.StringVar(&f.podNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this waypoint's namespace (default $POD_NAMESPACE)")
	fs.StringVar(&f.serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "this waypoint's service account, its identity (default $SERVICE_ACCOUNT)")
	fs.StringVar(&f.cluster, "cluster-id", cmp.Or(os.Getenv("CLUSTER_ID"), "Kubernetes"), "the cluster's id, for the xDS node and metrics (default $CLUSTER_ID, else Kubernetes)")
	instanceIPs := fs.String("instance-ip", os.Getenv("INSTANCE_IP"), "this waypoint's pod IPs, comma-separated, for its xDS node (default $INSTANCE_IP)")
	fs.UintVar(&f.upstreamHBONEPort, "upstream-hbone-port", proxy.DefaultUpstreamHBONEPort, "the endpoints' HBONE port")
	f.hbone = hbone.DefaultLimits()
	fs.DurationVar(&f.hbone.IdleTimeout, "hbone-idle-timeout", f.hbone.IdleTimeout, "close an inbound HBONE connection with no stream for this long")
	fs.IntVar(&f.hbone.MaxConnsPerPeer, "hbone-max-conns-per-peer", f.hbone.MaxConnsPerPeer, "inbound HBONE connections one peer identity may hold")
	fs.IntVar(&f.hbone.MaxStreamsPerPeer, "hbone-max-streams-per-peer", f.hbone.MaxStreamsPerPeer, "inbound HBONE streams one peer identity may hold")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case f.xdsAddr == "":
		return nil, errors.New("--xds-address: required")
	case f.podNamespace == "":
		return nil, errors.New("--pod-namespace: empty (and $POD_NAMESPACE unset)")
	case f.serviceAccount == "":
		return nil, errors.New("--service-account: empty (and $SERVICE_ACCOUNT unset)")
	case f.podName == "":
		return nil, errors.New("--pod-name: empty (and $POD_NAME unset)")
	case f.drain <= 0:
		return nil, fmt.Errorf("--drain-timeout: %s is not positive", f.drain)
	case f.upstreamHBONEPort == 0 || f.upstreamHBONEPort > 65535:
		return nil, fmt.Errorf("--upstream-hbone-port: %d is not a port", f.upstreamHBONEPort)
	case f.hbone.IdleTimeout <= 0 || f.hbone.MaxConnsPerPeer <= 0 || f.hbone.MaxStreamsPerPeer <= 0:
		return nil, errors.New("--hbone-*: limits must be positive")
	}
	for _, s := range strings.Split(*instanceIPs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--instance-ip: %q is not an IP address", s)
		}
		f.instanceIPs = append(f.instanceIPs, a)
	}
	if f.caAddr == "" {
		f.caAddr = f.xdsAddr
	}
	return f, nil
}

func main() {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

// xdsNode is the waypoint's node as Istio's waypoints send it: the id
// "router~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local" and the
// metadata NAME, NAMESPACE, SERVICE_ACCOUNT, INSTANCE_IPS and CLUSTER_ID.
// zmeshd decides what the waypoint serves from its authenticated identity,
// not from this.
func xdsNode(f *flags) (*corev3.Node, error) {
	ip := "127.0.0.1"
	ips := make([]string, 0, len(f.instanceIPs))
	for _, a := range f.instanceIPs {
		ips = append(ips, a.String())
	}
	if len(ips) > 0 {
		ip = ips[0]
	}
	m, err := structpb.NewStruct(map[string]any{
		"NAME": f.podName, "NAMESPACE": f.podNamespace, "SERVICE_ACCOUNT": f.serviceAccount,
		"INSTANCE_IPS": strings.Join(ips, ","), "CLUSTER_ID": f.cluster,
	})
	if err != nil {
		return nil, fmt.Errorf("xds node metadata: %w", err)
	}
	return &corev3.Node{
		Id:       fmt.Sprintf("router~%s~%s.%s~%s.svc.cluster.local", ip, f.podName, f.podNamespace, f.podNamespace),
		Metadata: m,
	}, nil
}

// run serves until ctx ends, then drains: the waypoint stops being ready,
// the proxy shuts down (GOAWAY to its peers, requests in flight finish)
// within --drain-timeout, and everything else stops.
func run(ctx context.Context, f *flags, stdout io.Writer) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("pod", f.podNamespace+"/"+f.podName)

	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	id, err := identity.WorkloadID(td, f.podNamespace, f.serviceAccount)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	mc, err := meshclient.Open(td, f.rootCert, f.tokenFile, meshclient.Config{
		XDSAddr: f.xdsAddr, CAAddr: f.caAddr, Plaintext: f.plaintextControlPlane, Log: log,
	})
	if err != nil {
		return err
	}
	defer mc.Close()
	node, err := xdsNode(f)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{Cluster: f.cluster})
	if err != nil {
		return err
	}
	observers := telemetry.Multi{metrics}
	if f.accessLog != "" {
		w := stdout
		if f.accessLog != "-" {
			file, err := os.OpenFile(f.accessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("--access-log: %w", err)
			}
			defer file.Close()
			w = file
		}
		al, err := telemetry.NewAccessLog(w, 0, reg)
		if err != nil {
			return err
		}
		defer al.Close()
		observers = append(observers, al)
	}

	// The mesh's workloads, from workload discovery, name clients in
	// telemetry.
	workloads := telemetry.NewWorkloads(0)
	px, err := proxy.New(proxy.Options{
		Certs: mc.Certs, Identity: id, Observer: observers, Workloads: workloads, Logger: log, Limits: f.hbone,
		UpstreamHBONEPort: uint16(f.upstreamHBONEPort),
	})
	if err != nil {
		return err
	}
	if _, err := telemetry.NewClusterStats(reg, px.ClusterStats); err != nil {
		return err
	}
	xc, err := xds.New(xds.Options{Conn: mc.XDS, Node: node, OnSnapshot: px.Update, Workloads: workloads, Log: log})
	if err != nil {
		return err
	}
	var draining atomic.Bool
	ready := func() bool { return !draining.Load() && px.Ready() }

	var wg sync.WaitGroup
	defer wg.Wait()
	// Everything but the data path stops with bg; the data path drains
	// first.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()
	wg.Go(func() { mc.Certs.Run(bg) })
	wg.Go(func() {
		// Fetched now rather than at the first tunnel, so that a CA that
		// refuses the waypoint shows in its log at once.
		if _, err := mc.Certs.SVID(bg, id); err != nil && bg.Err() == nil {
			log.Error("no certificate for the waypoint's identity yet", "identity", id.String(), "reason", err.Error())
		}
	})
	wg.Go(func() { xc.Run(bg) })

	adminH, err := admin.NewAdmin(admin.Options{Snapshot: xc.Snapshot, Ready: ready, Gatherer: reg})
	if err != nil {
		return err
	}
	if err := httpserve.Start(bg, &wg, log,
		httpserve.Endpoint{Flag: "--admin-address", Addr: f.adminAddr, Handler: adminH},
		httpserve.Endpoint{Flag: "--metrics-address", Addr: f.metricsAddr, Handler: admin.NewMetrics(reg)},
		httpserve.Endpoint{Flag: "--readiness-address", Addr: f.readyAddr, Handler: admin.NewReadiness(ready)},
	); err != nil {
		cancelBG()
		return err
	}
	hln, err := net.Listen("tcp", f.hboneAddr)
	if err != nil {
		cancelBG()
		return fmt.Errorf("--hbone-address: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- px.Serve(hln) }()
	log.Info("waypoint started", "identity", id.String(), "node", node.GetId(), "hbone", hln.Addr().String(),
		"admin", f.adminAddr, "metrics", f.metricsAddr, "readiness", f.readyAddr)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
		log.Error("HBONE listener failed", "reason", serveErr.Error())
	}
	draining.Store(true)
	log.Info("draining", "timeout", f.drain.String())
	dctx, cancel := context.WithTimeout(context.Background(), f.drain)
	defer cancel()
	if err := px.Shutdown(dctx); err != nil {
		log.Warn("drain cut short", "reason", err.Error())
	}
	if serveErr == nil {
		<-served
	}
	cancelBG()
	log.Info("drained")
	if serveErr != nil && !errors.Is(serveErr, proxy.ErrClosed) {
		return fmt.Errorf("hbone: %w", serveErr)
	}
	return nil
}
