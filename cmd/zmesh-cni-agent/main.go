// Command zmesh-cni-agent is the per-node DaemonSet of zmesh's capture: it
// installs the zmesh-cni plugin and chains it into the node's primary CNI
// configuration, answers the plugin on a unix socket, owns each ambient
// pod's eBPF capture (pinned under --bpf-root), hands pods to ztunnel over
// ZDS, and enrols or releases running pods when their labels change. Which
// pods are ambient comes from the API server (--kubeconfig or in-cluster)
// or, with no cluster, from zmeshd's workload stream (--xds-address).
//
// SIGTERM stops it without touching any pod: captured pods stay captured
// (failing closed while no ztunnel serves them), and the next agent takes
// them back from the pins.
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
)

type flags struct {
	node                    string
	cniBinDir, cniConfDir   string
	pluginBinary            string
	cniSocket, zdsSocket    string
	bpfRoot, hostNetns      string
	kubeconfig              string
	xdsAddr                 string
	plaintextControlPlane   bool
	rootCert, tokenFile     string
	excludedNamespaces      []string
	healthAddr              string
	releaseDelay, chainEach time.Duration
	uninstall               bool
	logLevel                string
	zdsPeerUID              int
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("zmesh-cni-agent", flag.ContinueOnError)
	defaultPlugin := "zmesh-cni"
	if exe, err := os.Executable(); err == nil {
		defaultPlugin = filepath.Join(filepath.Dir(exe), "zmesh-cni")
	}
	excluded := "kube-system"
	fs.StringVar(&f.node, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&f.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the host's CNI plugin directory")
	fs.StringVar(&f.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "the host's CNI configuration directory")
	fs.StringVar(&f.pluginBinary, "plugin-binary", defaultPlugin, "the zmesh-cni binary to install")
	fs.StringVar(&f.cniSocket, "cni-socket", "/var/run/zmesh/cni.sock", "unix socket the plugin asks the agent on")
	fs.StringVar(&f.zdsSocket, "zds-socket", "/var/run/ztunnel/ztunnel.sock", "unix socket (SOCK_SEQPACKET) ztunnel dials for ZDS")
	fs.StringVar(&f.bpfRoot, "bpf-root", "/sys/fs/bpf/zmesh", "bpffs directory of this node's pinned captures")
	fs.StringVar(&f.hostNetns, "host-netns", "", "path of the node's host network namespace (empty: the agent's own)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the API server (empty: in-cluster)")
	fs.StringVar(&f.xdsAddr, "xds-address", "", "zmeshd's gRPC address: take membership from its workload stream (no cluster)")
	fs.BoolVar(&f.plaintextControlPlane, "plaintext-control-plane", false, "talk to zmeshd without TLS (loopback demos only)")
	fs.StringVar(&f.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM roots verifying zmeshd (with --xds-address)")
	fs.StringVar(&f.tokenFile, "token-file", "", "bearer token presented to zmeshd (with --xds-address; re-read on each stream)")
	fs.StringVar(&excluded, "excluded-namespaces", excluded, "comma-separated namespaces never captured")
	fs.IntVar(&f.zdsPeerUID, "zds-peer-uid", -1, "a uid ztunnel runs as that may connect to --zds-socket besides root (-1: root only)")
	fs.StringVar(&f.healthAddr, "health-address", ":8000", "/healthz, /readyz and /metrics (empty: off)")
	fs.DurationVar(&f.releaseDelay, "release-delay", time.Second, "between withdrawing a leaving pod's annotation and removing its capture")
	fs.DurationVar(&f.chainEach, "chain-interval", time.Second, "how often the primary CNI configuration is checked for our entry")
	fs.BoolVar(&f.uninstall, "uninstall", false, "remove the plugin and its conflist entries, then exit")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, ns := range strings.Split(excluded, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			f.excludedNamespaces = append(f.excludedNamespaces, ns)
		}
	}
	if f.uninstall {
		return f, nil
	}
	if f.node == "" {
		return nil, errors.New("--node: empty (and $NODE_NAME unset)")
	}
	if f.kubeconfig != "" && f.xdsAddr != "" {
		return nil, errors.New("give at most one of --kubeconfig and --xds-address")
	}
	for name, p := range map[string]string{"--cni-socket": f.cniSocket, "--zds-socket": f.zdsSocket, "--bpf-root": f.bpfRoot} {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%s %q: want an absolute path", name, p)
		}
	}
	if f.zdsPeerUID < -1 || f.zdsPeerUID > 1<<32-2 {
		return nil, fmt.Errorf("--zds-peer-uid %d: want -1 or a uid", f.zdsPeerUID)
	}
	if f.releaseDelay < 0 || f.chainEach <= 0 {
		return nil, errors.New("--release-delay must be >= 0 and --chain-interval > 0")
	}
	return f, nil
}

func main() {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "zmesh-cni-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "zmesh-cni-agent:", err)
		os.Exit(1)
	}
}
