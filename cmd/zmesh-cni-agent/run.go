package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/agent/kube"
	"github.com/zmesh/zmesh/cni/agent/wds"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/meshclient"
)

// source is a membership source the agent runs: informers or the workload
// stream.
type source interface {
	agent.Source
	Run(ctx context.Context) error
	WaitSynced(ctx context.Context) error
	Pod(uid string) (agent.PodInfo, bool)
}

func run(ctx context.Context, f *flags) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", f.node)
	slog.SetDefault(log)

	inst := &agent.Installer{
		BinDir: f.cniBinDir, ConfDir: f.cniConfDir, PluginBinary: f.pluginBinary, Log: log,
		PluginConf: map[string]any{"agent_socket": f.cniSocket, "exclude_namespaces": f.excludedNamespaces},
	}
	if f.uninstall {
		err := inst.Unchain()
		if rerr := os.Remove(filepath.Join(f.cniBinDir, agent.PluginType)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		return err
	}

	var host netns.NsHandle
	if f.hostNetns != "" {
		h, err := netns.GetFromPath(f.hostNetns)
		if err != nil {
			return fmt.Errorf("--host-netns: %w", err)
		}
		defer h.Close()
		host = h
	}
	if err := checkBPFFS(f.bpfRoot); err != nil {
		return err
	}
	src, closeSrc, err := newSource(f, log)
	if err != nil {
		return err
	}
	defer closeSrc()
	for _, p := range []string{f.cniSocket, f.zdsSocket} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	var zdsOpts []agent.ZDSOption
	if f.zdsPeerUID >= 0 {
		zdsOpts = append(zdsOpts, agent.WithPeerUID(uint32(f.zdsPeerUID)))
	}
	zds, err := agent.NewZDSServer(f.zdsSocket, log, zdsOpts...)
	if err != nil {
		return fmt.Errorf("--zds-socket: %w", err)
	}
	node := &agent.Node{BPFRoot: f.bpfRoot, ZDS: zds, Members: src, HostNetns: host, Log: log}
	cni, err := agent.NewCNIServer(f.cniSocket, node, log)
	if err != nil {
		return fmt.Errorf("--cni-socket: %w", err)
	}
	if err := inst.InstallBinary(); err != nil {
		return err
	}

	var ready atomic.Bool
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.healthAddr != "" {
		ln, err := net.Listen("tcp", f.healthAddr)
		if err != nil {
			return fmt.Errorf("--health-address: %w", err)
		}
		wg.Go(func() { serveHealth(ctx, ln, &ready, metrics(zds)) })
	}
	wg.Go(func() { src.Run(ctx) })
	log.Info("waiting for the membership source")
	if err := src.WaitSynced(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	// Pods captured by an earlier run are registered before any ztunnel is
	// let in: a snapshot without them would make ztunnel drop them.
	if err := node.Restore(ctx, "/proc", src.Pod); err != nil {
		log.Warn("restoring pods captured before the restart", "reason", err.Error())
	}
	rec := &agent.Reconciler{Node: node, Source: src, ProcRoot: "/proc", ReleaseDelay: f.releaseDelay, Log: log}
	if f.releaseDelay == 0 {
		rec.ReleaseDelay = -1
	}
	if st, ok := src.(agent.Status); ok {
		rec.Status = st
	}
	wg.Go(func() {
		if err := zds.Run(ctx); err != nil {
			log.Error("zds server stopped", "reason", err.Error())
			cancel()
		}
	})
	wg.Go(func() {
		if err := cni.Run(ctx); err != nil {
			log.Error("cni server stopped", "reason", err.Error())
			cancel()
		}
	})
	wg.Go(func() { rec.Run(ctx) })
	// Chained last: the plugin finds the agent answering from its first
	// call. The entry stays at shutdown: a pod starting while no agent runs
	// must fail (and be retried), not start outside the mesh.
	wg.Go(func() { inst.Run(ctx, f.chainEach) })
	ready.Store(true)
	log.Info("zmesh-cni-agent running", "cni_socket", f.cniSocket, "zds_socket", f.zdsSocket, "bpf_root", f.bpfRoot)
	<-ctx.Done()
	log.Info("zmesh-cni-agent stopping; captured pods stay captured")
	return nil
}

// newSource picks the membership source from the flags.
func newSource(f *flags, log *slog.Logger) (source, func(), error) {
	if f.xdsAddr != "" {
		var roots *meshclient.Bundle
		if !f.plaintextControlPlane {
			// The trust domain only labels the bundle: here it verifies
			// zmeshd's serving certificate, not SPIFFE peers.
			var err error
			if roots, err = meshclient.LoadBundle(spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain), f.rootCert, log); err != nil {
				return nil, nil, fmt.Errorf("--root-cert: %w", err)
			}
		}
		conn, err := meshclient.Dial(f.xdsAddr, roots)
		if err != nil {
			return nil, nil, fmt.Errorf("--xds-address: %w", err)
		}
		var cc grpc.ClientConnInterface = conn
		if f.tokenFile != "" {
			cc = meshclient.WithToken(conn, meshclient.TokenFile(f.tokenFile))
		}
		m, err := wds.New(wds.Config{Conn: cc, Node: f.node, Log: log})
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		return m, func() { conn.Close() }, nil
	}
	var cfg *rest.Config
	var err error
	if f.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		err = fmt.Errorf("no --kubeconfig or --xds-address, and not in a cluster: %w", err)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg.UserAgent = "zmesh-cni-agent/" + f.node
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	m, err := kube.New(kube.Config{Client: client, Node: f.node, ExcludedNamespaces: f.excludedNamespaces, Log: log})
	if err != nil {
		return nil, nil, err
	}
	return m, func() {}, nil
}

// checkBPFFS makes sure pins will survive the agent: root must be on a bpf
// filesystem (created if missing).
func checkBPFFS(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("--bpf-root: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("--bpf-root: %w", err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("--bpf-root %s: not on a bpf filesystem (mount -t bpf bpf %s, or use a directory under /sys/fs/bpf)", root, root)
	}
	return nil
}

// metrics exports what ztunnels refused: pods waiting to be taken (each
// stays captured, failing closed, and is offered again with backoff), all
// refused Adds, and connections refused for their peer's credentials.
func metrics(zds *agent.ZDSServer) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "zmesh_cni_zds_pods_refused",
			Help: "Pods the node's ztunnel refused and that are offered to it again with backoff.",
		}, func() float64 { return float64(len(zds.Failed())) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "zmesh_cni_zds_pod_refusals_total",
			Help: "Adds of a pod that ztunnel refused (retries included).",
		}, func() float64 { n, _ := zds.Stats(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "zmesh_cni_zds_peers_rejected_total",
			Help: "Connections to the ZDS socket refused because the peer was neither root nor --zds-peer-uid.",
		}, func() float64 { _, n := zds.Stats(); return float64(n) }),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// serveHealth answers /healthz (the process is up), /readyz (it serves
// the plugin and ztunnel) and /metrics until ctx ends.
func serveHealth(ctx context.Context, ln net.Listener, ready *atomic.Bool, metrics http.Handler) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	srv.Serve(ln)
}
