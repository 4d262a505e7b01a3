// Package noderunner plays the kubelet's part of a node for the e2e suite,
// the demo and the benchmark (docs/decisions.md, "Running without a
// cluster"): it
// creates each pod's network namespace, runs the node's CNI configuration
// through libcni from the node's host namespace (on a meshed node: the
// primary plugins, then zmesh-cni chained in by zmesh-cni-agent), starts
// the pod's process inside it, and on the way out stops the process and
// runs CNI DEL. The pods come from a Kubernetes API server (Kubelet) or,
// with no cluster, from the YAML directory zmeshd reads (Files); both share
// one sandbox (sandbox.go).
//
// What the Kubelet honours of a pod whose image is a zmesh image (the
// chart's DaemonSets and Deployments, the waypoints): the container's
// command and args unchanged; env with downward-API fieldRefs, and
// KUBERNETES_SERVICE_HOST/PORT; ConfigMap, Secret (modes, fsGroup),
// emptyDir, hostPath (under the node's own tree, Images.HostRoot; types
// checked or created) and projected volumes (service-account tokens from
// the TokenRequest API with their audience and bound to the pod,
// ConfigMaps, downward API), bind-mounted at their mountPaths in the pod's
// own mount namespace, read-only where asked; a resolv.conf naming the
// cluster DNS with the namespace's search path (dnsPolicy ClusterFirst,
// ClusterFirstWithHostNet); hostNetwork (the node's host namespace and
// address); runAsUser, runAsGroup, fsGroup, supplementalGroups, the
// capabilities' drop/add as the bounding set and
// allowPrivilegeEscalation=false, through setpriv; HTTP and TCP readiness
// probes from the node's host namespace, reported as the pod's Ready
// condition; restarts after the process exits, with back-off. What it does
// not: images (the binary built from this tree runs instead; a tag with a
// directory of its own under Images.Bin runs the build there, so a test can
// run an older release's binary by tag), seccomp,
// AppArmor and SELinux profiles, readOnlyRootFilesystem (the pod sees the
// machine's file system outside its volumes), the runtime's default
// capability set (a container that drops nothing keeps root's),
// hostPID=false (every pod shares the machine's PID namespace), liveness
// and startup probes, exec probes, subPath, resource limits, init and
// sidecar containers (only the first container runs), mountPropagation
// (every pod's mount namespace is a slave of the machine's, where the pods'
// network namespaces are mounted in Kubelet.NetnsDir).
//
// Start is the older shortcut that skips CNI: it runs the node's agent
// (capture + ZDS server) in this process and enrols pods living in
// namespaces the caller made.
package noderunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/cniapi"
)

// Node is one node's in-process agent (see Start).
type Node struct {
	Name    string
	ZDSPath string
	Agent   *agent.Node
	ZDS     *agent.ZDSServer

	bpfRoot string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// Start mounts a bpffs under dir and starts the node's ZDS server at
// dir/zds.sock. members decides which pods are ambient; host is the
// namespace the node reaches its pods from (probe source).
func Start(name, dir string, members agent.Membership, host netns.NsHandle, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.Default()
	}
	n := &Node{Name: name, ZDSPath: filepath.Join(dir, "zds.sock"), bpfRoot: filepath.Join(dir, "bpf")}
	if err := os.MkdirAll(n.bpfRoot, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", n.bpfRoot, "bpf", 0, ""); err != nil {
		return nil, fmt.Errorf("mount bpffs at %s: %w", n.bpfRoot, err)
	}
	srv, err := agent.NewZDSServer(n.ZDSPath, log)
	if err != nil {
		unix.Unmount(n.bpfRoot, unix.MNT_DETACH)
		return nil, err
	}
	n.ZDS = srv
	n.Agent = &agent.Node{BPFRoot: n.bpfRoot, ZDS: srv, Members: members, HostNetns: host, Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Go(func() { srv.Run(ctx) })
	return n, nil
}

// Pod is what the node runner knows of a pod.
type Pod struct {
	UID, Name, Namespace string
	NetnsPath            string
	IPs                  []string
}

func (p Pod) cni() *cniapi.Pod {
	return &cniapi.Pod{UID: p.UID, Name: p.Name, Namespace: p.Namespace, Netns: p.NetnsPath, IPs: p.IPs}
}

// Add enrols a pod as CNI ADD would: captured and handed to ztunnel if
// ambient. It fails if no ztunnel takes it.
func (n *Node) Add(ctx context.Context, p Pod) (bool, error) {
	return n.Agent.Add(ctx, p.cni())
}

// Del releases a pod as CNI DEL would.
func (n *Node) Del(ctx context.Context, p Pod) error { return n.Agent.Del(ctx, p.cni()) }

// Close stops the agent and unmounts its bpffs (pins go with it).
func (n *Node) Close() error {
	n.cancel()
	n.wg.Wait()
	return errors.Join(unix.Unmount(n.bpfRoot, unix.MNT_DETACH), os.Remove(n.bpfRoot))
}
