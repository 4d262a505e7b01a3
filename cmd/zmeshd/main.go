// Command zmeshd is zmesh's control plane: it reads the mesh's config from
// a Kubernetes API server (--kubeconfig, or in cluster) or from a directory
// of YAML files (--config-dir; the last good version of every object is
// kept in --state-dir across restarts), translates it, pushes it to every ztunnel
// over delta xDS, and signs workload certificates.
//
// Ports: --xds-address serves xDS and the CA in plaintext (loopback use:
// demos, tests, a node-local setup); --secure-address serves both over
// TLS, with clients proving who they are by bearer token (a bound
// service-account token in a cluster, a static token file otherwise) or
// mesh certificate; --monitoring-address serves /metrics, /ready and
// /debug/syncz. The two unauthenticated ports bind to loopback unless told
// otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/identity"
)

type flags struct {
	configDir, kubeconfig        string
	stateDir                     string
	xdsAddr, secureAddr, monAddr string
	secureHosts                  string
	caDir, tokensFile            string
	caSecret, caSecretNamespace  string
	trustDomain, rootNamespace   string
	clusterID, network, domain   string
	nodeAgents                   string
	leaderElect                  bool
	leaseNamespace, leaseName    string
	identity                     string
	waypointImage, waypointXDS   string
	waypointSizingJSON           string
	waypointSizing               deployer.Sizing
	debounce, maxDelay           time.Duration
	certTTL                      time.Duration
	logLevel                     string
}

func parseFlags(args []string) (*flags, error) {
	f, fs := newFlags()
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return f.check(fs)
}

// newFlags declares zmeshd's flags, with their defaults in f.
func newFlags() (*flags, *flag.FlagSet) {
	f := &flags{}
	fs := flag.NewFlagSet("zmeshd", flag.ContinueOnError)
	fs.StringVar(&f.configDir, "config-dir", "", "read the mesh from this directory of YAML files (no cluster)")
	fs.StringVar(&f.stateDir, "state-dir", "", "with --config-dir: where the last good version of every object is kept, so that a restart with a broken file still serves what was in force (empty: "+lastGoodDir+" inside --config-dir)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "read the mesh from this cluster (empty with no --config-dir: in-cluster config)")
	fs.StringVar(&f.xdsAddr, "xds-address", "127.0.0.1:15010", "plaintext gRPC (xDS + CA) address; loopback by default, as xDS on it is unauthenticated (anyone reaching it reads the whole mesh): keep it there; empty disables it")
	fs.StringVar(&f.secureAddr, "secure-address", ":15012", "TLS gRPC (xDS + CA) address; empty disables it")
	fs.StringVar(&f.secureHosts, "secure-hosts", "zmeshd.istio-system.svc,localhost,127.0.0.1", "comma-separated DNS names and IPs of the TLS port's certificate")
	fs.StringVar(&f.monAddr, "monitoring-address", "127.0.0.1:15014", "HTTP address of /metrics, /ready, /version and /debug/syncz (which lists every proxy, its address and identity); loopback by default, unauthenticated: widen it (e.g. :15014 for a scraper) only where the network is trusted")
	fs.StringVar(&f.caDir, "ca-dir", "/var/lib/zmeshd/ca", "directory of the CA's key and certificates (created if empty)")
	fs.StringVar(&f.caSecret, "ca-secret", "", "with a cluster and no keys in --ca-dir: the Secret that holds the CA's self-signed root (created with a new root if absent), so every replica signs with the same key; empty: the root is generated into --ca-dir")
	fs.StringVar(&f.caSecretNamespace, "ca-secret-namespace", envOr("POD_NAMESPACE", "istio-system"), "namespace of --ca-secret")
	fs.StringVar(&f.tokensFile, "tokens-file", "", "static bearer tokens (\"<token> <spiffe-id> <node>\" per line) instead of TokenReview, read again when it changes; required with --config-dir")
	fs.StringVar(&f.trustDomain, "trust-domain", identity.DefaultTrustDomain, "the mesh's trust domain")
	fs.StringVar(&f.rootNamespace, "root-namespace", "istio-system", "namespace whose policies apply mesh-wide")
	fs.StringVar(&f.clusterID, "cluster-id", "Kubernetes", "cluster name in workload uids")
	fs.StringVar(&f.network, "network", "", "network of every workload (multi-network meshes)")
	fs.StringVar(&f.domain, "domain-suffix", "cluster.local", "DNS suffix of service hostnames")
	fs.StringVar(&f.nodeAgents, "node-agents", "istio-system/ztunnel,kube-system/ztunnel", "comma-separated namespace/serviceaccount of the ztunnels, which may obtain certificates for the pods on their node")
	fs.BoolVar(&f.leaderElect, "leader-elect", true, "with Kubernetes: only the elected replica writes (status, waypoints); every replica serves")
	fs.StringVar(&f.leaseNamespace, "leader-election-namespace", envOr("POD_NAMESPACE", "istio-system"), "namespace of the leader election Lease")
	fs.StringVar(&f.leaseName, "leader-election-name", "zmeshd", "name of the leader election Lease")
	fs.StringVar(&f.identity, "identity", envOr("POD_NAME", hostname()), "this replica's name in leader election")
	fs.StringVar(&f.waypointImage, "waypoint-image", "zmesh/waypoint:latest", "image of the waypoint Deployments zmeshd creates")
	fs.StringVar(&f.waypointSizingJSON, "waypoint-defaults", "", `scaling and sizing of every waypoint, as JSON: {"replicas":N,"resources":{...},"autoscaling":{"enabled":true,"minReplicas":N,"maxReplicas":N,"targetCPUUtilizationPercentage":N},"podDisruptionBudget":{"enabled":true,"minAvailable":N}} (the chart's waypoint values); empty: replicas left to users, no resources, no autoscaler or budget`)
	fs.StringVar(&f.waypointXDS, "waypoint-xds-address", "zmeshd.istio-system.svc:15012", "zmeshd's address as waypoints dial it")
	fs.DurationVar(&f.debounce, "debounce", 10*time.Millisecond, "quiet time after a change before pushing")
	fs.DurationVar(&f.maxDelay, "debounce-max", 100*time.Millisecond, "longest a change waits under a steady stream of changes")
	fs.DurationVar(&f.certTTL, "workload-cert-ttl", identity.DefaultCertTTL, "default lifetime of workload certificates")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return f, fs
}

// check validates the flags fs parsed into f.
func (f *flags) check(fs *flag.FlagSet) (*flags, error) {
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.configDir != "" && f.kubeconfig != "" {
		return nil, errors.New("give --config-dir or --kubeconfig, not both")
	}
	if f.stateDir != "" && f.configDir == "" {
		return nil, errors.New("--state-dir: only used with --config-dir (a cluster keeps its own state)")
	}
	if f.configDir != "" && f.tokensFile == "" {
		return nil, errors.New("--tokens-file: needed with --config-dir (the CA authenticates ztunnels, and there is no TokenReview without a cluster)")
	}
	if f.xdsAddr == "" && f.secureAddr == "" {
		return nil, errors.New("--xds-address and --secure-address both empty: nothing would be served")
	}
	if f.waypointSizingJSON != "" {
		sz, err := deployer.ParseSizing([]byte(f.waypointSizingJSON))
		if err != nil {
			return nil, fmt.Errorf("--waypoint-defaults: %w", err)
		}
		f.waypointSizing = sz
	}
	if f.debounce <= 0 || f.maxDelay < f.debounce {
		return nil, fmt.Errorf("--debounce %s / --debounce-max %s: want 0 < debounce <= max", f.debounce, f.maxDelay)
	}
	return f, nil
}

// lastGoodDir is the default --state-dir, inside --config-dir: hidden, so
// the directory's reader skips it.
const lastGoodDir = ".zmesh-last-good"

// lastGood is where the directory source keeps its last good versions.
func (f *flags) lastGood() string {
	if f.stateDir != "" {
		return f.stateDir
	}
	return filepath.Join(f.configDir, lastGoodDir)
}

func (f *flags) hosts() []string {
	var out []string
	for h := range strings.SplitSeq(f.secureHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func main() {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "zmeshd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "zmeshd:", err)
		os.Exit(1)
	}
}
