package noderunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/e2e/netenv"
)

// Files is the node runner's mode without an API server (docs/decisions.md,
// "Running without a cluster"): its pods are the Pods of the YAML
// directory zmeshd reads with --config-dir whose spec.nodeName is this
// node. Each gets the uid model.NormalizeFilePod gives it (a UUIDv5 of
// namespace/name, the one zmeshd and the agent's no-cluster source derive
// too), and the same sandbox as in the Kubernetes mode: a network
// namespace set up by the node's CNI configuration through libcni, with
// host-local asked for exactly the pod's status.podIP (docs/decisions.md,
// "ZDS"), and its process. A Pod without status.podIP is not started (there is no API
// to report an address to).
type Files struct {
	// Dir is the YAML directory.
	Dir  string
	Node string
	// Host is the node's host namespace: the CNI plugins run there.
	Host *netenv.NS
	// CNIBinDir and CNIConfDir are the node's CNI directories.
	CNIBinDir, CNIConfDir string
	// App returns the command to run as the pod's process; nil runs none.
	App func(pod *corev1.Pod) *exec.Cmd
	// Waypoints, if set, has this runner run the directory's waypoint
	// Gateways too (see FilesWaypoints).
	Waypoints *FilesWaypoints
	Log       *slog.Logger

	// op serialises syncs and Close.
	op        sync.Mutex
	src       *dir.Source
	mu        sync.Mutex
	pods      map[types.UID]*RunningPod
	waypoints map[types.NamespacedName]*runningWaypoint
	// rejected are the waypoint Gateways refused, with why; retry the
	// waypoints that failed to start.
	rejected map[types.NamespacedName]string
	retry    map[types.NamespacedName]*waypointRetry
	closed   bool
}

func (f *Files) sandbox() sandbox {
	s := sandbox{host: f.Host, binDir: f.CNIBinDir, confDir: f.CNIConfDir, app: f.App}
	if f.Waypoints != nil {
		s.images = f.Waypoints.Images
	}
	return s
}

func (f *Files) log() *slog.Logger {
	if f.Log == nil {
		return slog.Default()
	}
	return f.Log
}

// Sync reads the directory once and brings the node's pods to it: pods it
// lists for this node start, pods it no longer lists (or lists at another
// address) stop. It returns the errors of the pods it could not start.
func (f *Files) Sync(ctx context.Context) error {
	f.op.Lock()
	defer f.op.Unlock()
	if f.src == nil {
		f.src = &dir.Source{Dir: f.Dir, Log: f.log()}
	}
	u, err := f.src.Load()
	if err != nil {
		return err
	}
	return f.apply(ctx, u.Snapshot)
}

// Run syncs again after every change of the directory until ctx ends, then
// stops every pod (as Close) and returns. A pod that failed to start (its
// CNI ADD failed: the agent could not decide its membership yet, say) is
// tried again every second, as a kubelet retries a sandbox.
func (f *Files) Run(ctx context.Context) error {
	src := &dir.Source{Dir: f.Dir, Log: f.log(), Interval: 200 * time.Millisecond}
	// last and failed are guarded by f.op, as apply is.
	var last *model.Snapshot
	var failed bool
	var lastErr string // logged once while it stays the same
	applyLocked := func(s *model.Snapshot) {
		last = s
		err := f.apply(ctx, s)
		failed = err != nil
		if err != nil && ctx.Err() == nil && err.Error() != lastErr {
			f.log().Warn("pod sync", "node", f.Node, "reason", err.Error())
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f.op.Lock()
				if failed {
					applyLocked(last)
				}
				f.op.Unlock()
			}
		}
	})
	err := src.Run(ctx, func(u *dir.Update) {
		f.op.Lock()
		defer f.op.Unlock()
		applyLocked(u.Snapshot)
	})
	wg.Wait()
	return errors.Join(err, f.Close())
}

// apply starts and stops pods (then waypoints) to match the directory's.
// Called with op held.
func (f *Files) apply(ctx context.Context, s *model.Snapshot) error {
	return errors.Join(f.applyPods(ctx, s.Pods), f.applyWaypoints(ctx, s))
}

func (f *Files) applyPods(ctx context.Context, listed []*corev1.Pod) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errors.New("node runner closed")
	}
	if f.pods == nil {
		f.pods = map[types.UID]*RunningPod{}
	}
	want := map[types.UID]*corev1.Pod{}
	for _, p := range listed {
		if p.Spec.NodeName == f.Node && p.Status.PodIP != "" && !p.Spec.HostNetwork && p.Annotations[GeneratedAnnotation] == "" {
			want[p.UID] = p
		}
	}
	var stale []*RunningPod
	for uid, rp := range f.pods {
		if p := want[uid]; p == nil || p.Status.PodIP != rp.IP.String() {
			stale = append(stale, rp)
		}
	}
	f.mu.Unlock()
	var errs []error
	for _, rp := range stale {
		errs = append(errs, f.stop(rp))
	}
	uids := make([]types.UID, 0, len(want))
	for uid := range want {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	for _, uid := range uids {
		if ctx.Err() != nil {
			break
		}
		f.mu.Lock()
		_, running := f.pods[uid]
		f.mu.Unlock()
		if running {
			continue
		}
		pod := want[uid]
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || !ip.Is4() {
			errs = append(errs, fmt.Errorf("pod %s/%s: status.podIP %q: want an IPv4 address", pod.Namespace, pod.Name, pod.Status.PodIP))
			continue
		}
		rp, err := f.sandbox().start(ctx, pod, ip)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err))
			continue
		}
		f.mu.Lock()
		f.pods[uid] = rp
		f.mu.Unlock()
		f.log().Info("pod running", "node", f.Node, "pod", pod.Namespace+"/"+pod.Name, "ip", rp.IP, "cni_add", rp.CNIAdd.Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

func (f *Files) stop(rp *RunningPod) error {
	err := f.sandbox().stop(rp)
	if errors.Is(err, errDel) {
		return err // kept: the next sync or Close tries again
	}
	f.mu.Lock()
	delete(f.pods, rp.UID)
	f.mu.Unlock()
	f.log().Info("pod stopped", "node", f.Node, "pod", rp.Namespace+"/"+rp.Name)
	return err
}

// Close stops every pod (process, CNI DEL, namespace); later syncs do
// nothing. Run it while the node's agent still runs, so that DEL releases
// the pods' capture.
func (f *Files) Close() error {
	f.op.Lock()
	defer f.op.Unlock()
	f.mu.Lock()
	f.closed = true
	pods := make([]*RunningPod, 0, len(f.pods))
	for _, p := range f.pods {
		pods = append(pods, p)
	}
	wps := make([]types.NamespacedName, 0, len(f.waypoints))
	for k := range f.waypoints {
		wps = append(wps, k)
	}
	f.mu.Unlock()
	var errs []error
	for _, k := range wps {
		f.mu.Lock()
		w := f.waypoints[k]
		f.mu.Unlock()
		if err := f.stopWaypoint(k); errors.Is(err, errDel) {
			errs = append(errs, err, w.pod.NS.Close(), os.Remove(w.file))
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range pods {
		if err := f.stop(p); errors.Is(err, errDel) {
			// Leave nothing behind even so: the namespace goes.
			errs = append(errs, err, p.NS.Close())
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	if f.Waypoints != nil && f.Waypoints.Images != nil {
		errs = append(errs, f.Waypoints.Images.Close())
	}
	return errors.Join(errs...)
}

// Pod returns the running pod of that name, or nil.
func (f *Files) Pod(namespace, name string) *RunningPod {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// Pods lists the running pods by namespace and name.
func (f *Files) Pods() []*RunningPod {
	f.mu.Lock()
	out := make([]*RunningPod, 0, len(f.pods))
	for _, p := range f.pods {
		out = append(out, p)
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}
