package noderunner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/controlplane/model"
)

// FilesWaypoints makes a Files runner play the waypoint deployer too, for
// a mesh with no API server (zmeshd --config-dir has no deployer): for
// each Gateway of class istio-waypoint in the directory it runs one pod of
// the Deployment deployer.Desired returns — the controller's own object,
// not a copy — as the Kubelet mode runs a zmesh image: through the node's
// CNI chain, the container's args and env unchanged, its token and
// root-cert volumes mounted where the manifest says.
//
// What an API server would hold, the runner writes into the directory, for
// zmeshd (and the node agents) to read like any other file: the Gateway's
// Service, with a cluster IP the runner assigns, and the Pod, with its
// node and address, Running but not Ready until its readiness probe
// passes, then Ready. The file is <Dir>/zz-waypoint.<namespace>.<name>.yaml;
// it goes when the Gateway does and when the runner closes.
//
// The runner reconciles as the deployer does, from the same directory
// stream: a Gateway added starts its waypoint, one removed stops it (its
// pod, CNI DEL, its file), and a change of the desired objects (the
// Gateway, or the ConfigMap its spec.infrastructure.parametersRef names,
// read from the directory too) restarts it, as a Deployment rolls out. A
// Gateway the deployer would refuse (a bad listener or label, a
// parametersRef that cannot be followed, a patch that does not apply) is
// logged once with the field, as its Accepted=False condition says, and
// the waypoint it had keeps running. A waypoint that fails to start is
// tried again with a backoff (1 s doubling to a minute), not on every sync.
//
// Of the deployer's objects, the runner uses the Deployment's pod template
// (one pod whatever the replicas: command, args, env, labels, annotations,
// volumes, readiness probe; resources are not enforced, and the pod is
// scheduled here whatever its affinity) and the Service (ports, labels,
// annotations; the cluster IP is the runner's). A ServiceAccount,
// autoscaler or disruption budget patch is checked as the deployer checks
// it and has no effect: there is no autoscaler or eviction here, and the
// waypoint's identity is the Gateway's name.
//
// One node's runner should have Waypoints set: it is where the cluster's
// waypoints are scheduled.
type FilesWaypoints struct {
	// Images runs the waypoint's container: Bin holds the waypoint binary;
	// with no Client, its Token and ConfigMap supply the volumes.
	Images *Images
	// Options are the deployer's (Image, XDSAddress as pods reach zmeshd,
	// ExtraArgs).
	Options deployer.Options
	// PodCIDR is this node's pod range, ServiceCIDR the Services'.
	// Addresses are taken from the top of each range down, skipping those
	// the directory's Pods and Services hold, so that hand-written YAML
	// (which counts up) keeps its own.
	PodCIDR, ServiceCIDR netip.Prefix
	// ReadyWait bounds the wait for the readiness probe (default 30 s).
	ReadyWait time.Duration
}

// GeneratedAnnotation marks the Pods the runner writes for waypoints: it
// runs them from their Gateway, not as Pods of the directory.
const GeneratedAnnotation = "noderunner.zmesh.io/waypoint-of"

// Backoff between tries to start a waypoint that failed to start.
const (
	waypointMinBackoff = time.Second
	waypointMaxBackoff = time.Minute
)

// waypointRetry is a waypoint that failed to start: the same desired
// objects are not tried again before next.
type waypointRetry struct {
	spec  string
	next  time.Time
	delay time.Duration
	err   error
}

// runningWaypoint is one waypoint the runner runs.
type runningWaypoint struct {
	pod  *RunningPod
	file string
	// spec identifies the desired objects it was started from: a change
	// restarts it (a Deployment's rollout).
	spec string
	svc  netip.Addr
}

// Waypoint returns the running pod of a waypoint Gateway, or nil.
func (f *Files) Waypoint(namespace, gateway string) *RunningPod {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w := f.waypoints[types.NamespacedName{Namespace: namespace, Name: gateway}]; w != nil {
		return w.pod
	}
	return nil
}

// WaypointRejected says why the runner refuses the Gateway's waypoint
// (the field and the problem, as the deployer's Accepted=False condition
// says it), or "" if it does not.
func (f *Files) WaypointRejected(namespace, gateway string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rejected[types.NamespacedName{Namespace: namespace, Name: gateway}]
}

// applyWaypoints starts and stops waypoints to match the directory's
// Gateways. Called with op held.
func (f *Files) applyWaypoints(ctx context.Context, s *model.Snapshot) error {
	wc := f.Waypoints
	if wc == nil {
		return nil
	}
	var errs []error
	configMaps := map[types.NamespacedName]*corev1.ConfigMap{}
	for _, cm := range s.ConfigMaps {
		configMaps[types.NamespacedName{Namespace: cm.Namespace, Name: cm.Name}] = cm
	}
	lookup := func(namespace, name string) *corev1.ConfigMap {
		return configMaps[types.NamespacedName{Namespace: namespace, Name: name}]
	}
	want := map[types.NamespacedName]deployer.Objects{}
	rejected := map[types.NamespacedName]string{}
	for _, gw := range s.Gateways {
		if gw.Spec.GatewayClassName != deployer.ClassName {
			continue
		}
		key := types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}
		o, err := deployer.DesiredWith(gw, wc.Options, lookup)
		if err != nil {
			rejected[key] = err.Error()
			continue
		}
		want[key] = o
	}
	f.mu.Lock()
	if f.waypoints == nil {
		f.waypoints = map[types.NamespacedName]*runningWaypoint{}
	}
	// A rejection is the Gateway's state, not a failure to retry: said
	// once, when it starts or changes.
	for key, why := range rejected {
		if f.rejected[key] != why {
			_, running := f.waypoints[key]
			f.log().Warn("waypoint Gateway rejected", "node", f.Node, "gateway", key.String(), "reason", why, "last_good_running", running)
		}
	}
	f.rejected = rejected
	var stale []types.NamespacedName
	for key, w := range f.waypoints {
		if _, bad := rejected[key]; bad {
			continue // the last good waypoint keeps running
		}
		if o, ok := want[key]; !ok || specOf(o) != w.spec {
			stale = append(stale, key)
		}
	}
	for key := range f.retry {
		if _, ok := want[key]; !ok {
			delete(f.retry, key)
		}
	}
	f.mu.Unlock()
	for _, key := range stale {
		errs = append(errs, f.stopWaypoint(key))
	}
	keys := make([]types.NamespacedName, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b types.NamespacedName) int { return compareKeys(a, b) })
	for _, key := range keys {
		if ctx.Err() != nil {
			break
		}
		spec := specOf(want[key])
		f.mu.Lock()
		_, running := f.waypoints[key]
		r := f.retry[key]
		f.mu.Unlock()
		if running {
			continue
		}
		if r != nil && r.spec == spec && time.Now().Before(r.next) {
			errs = append(errs, fmt.Errorf("waypoint %s: %w (tried again %s after the last try)", key, r.err, r.delay))
			continue
		}
		err := f.startWaypoint(ctx, s, key, want[key])
		f.mu.Lock()
		if err == nil {
			delete(f.retry, key)
		} else {
			delay := waypointMinBackoff
			if r != nil && r.spec == spec {
				delay = min(2*r.delay, waypointMaxBackoff)
			}
			if f.retry == nil {
				f.retry = map[types.NamespacedName]*waypointRetry{}
			}
			f.retry[key] = &waypointRetry{spec: spec, next: time.Now().Add(delay), delay: delay, err: err}
			errs = append(errs, fmt.Errorf("waypoint %s: %w", key, err))
		}
		f.mu.Unlock()
	}
	return errors.Join(errs...)
}

func compareKeys(a, b types.NamespacedName) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}

// specOf fingerprints the desired objects.
func specOf(o deployer.Objects) string {
	b, _ := yaml.Marshal(struct {
		D any `json:"d"`
		S any `json:"s"`
	}{o.Deployment.Spec, o.Service.Spec})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// startWaypoint writes the waypoint's Service and Pending Pod, runs the
// pod, waits for its readiness probe and reports it Ready.
func (f *Files) startWaypoint(ctx context.Context, s *model.Snapshot, key types.NamespacedName, o deployer.Objects) error {
	wc := f.Waypoints
	spec := specOf(o)
	podIP, err := f.freeAddr(wc.PodCIDR, s, true)
	if err != nil {
		return fmt.Errorf("pod address: %w", err)
	}
	svcIP, err := f.freeAddr(wc.ServiceCIDR, s, false)
	if err != nil {
		return fmt.Errorf("service address: %w", err)
	}
	tmpl := o.Deployment.Spec.Template
	// A ReplicaSet's pod name: the Deployment's, a hash of its template.
	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: key.Namespace, Name: key.Name + "-" + spec[:10],
			Labels: tmpl.Labels, Annotations: map[string]string{GeneratedAnnotation: key.Name},
		},
		Spec: *tmpl.Spec.DeepCopy(),
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP.String(),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}},
	}
	for k, v := range tmpl.Annotations {
		pod.Annotations[k] = v
	}
	pod.Spec.NodeName = f.Node
	pod.UID = model.FilePodUID(pod.Namespace, pod.Name)
	svc := o.Service.DeepCopy()
	svc.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	svc.Spec.ClusterIP = svcIP.String()
	svc.OwnerReferences, pod.OwnerReferences = nil, nil
	file := filepath.Join(f.Dir, "zz-waypoint."+key.Namespace+"."+key.Name+".yaml")
	// Written before CNI ADD, Running but not Ready: without a cluster,
	// the node agent learns the pod (and that it is not to be captured)
	// only from zmeshd, which reads it from here and lists only running
	// pods. Not Ready, it is no endpoint yet.
	if err := writeObjects(file, svc, pod); err != nil {
		return err
	}
	rp, err := f.sandbox().start(ctx, pod, podIP)
	if err != nil {
		os.Remove(file)
		return err
	}
	w := &runningWaypoint{pod: rp, file: file, spec: spec, svc: svcIP}
	f.mu.Lock()
	f.waypoints[key] = w
	f.mu.Unlock()
	if err := f.waitReady(ctx, rp, podIP); err != nil {
		return errors.Join(err, f.stopWaypoint(key))
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if err := writeObjects(file, svc, pod); err != nil {
		return errors.Join(err, f.stopWaypoint(key))
	}
	f.log().Info("waypoint running", "node", f.Node, "gateway", key.String(), "pod", pod.Name, "ip", podIP, "service_ip", svcIP)
	return nil
}

// waitReady runs the container's readiness probe until it passes.
func (f *Files) waitReady(ctx context.Context, rp *RunningPod, ip netip.Addr) error {
	wait := f.Waypoints.ReadyWait
	if wait == 0 {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for !probeReady(ctx, f.Host, rp.Container, ip) {
		select {
		case <-rp.exited:
			return fmt.Errorf("the waypoint exited before it was ready (%s)", rp.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s (readiness probe on %s)", wait, ip)
		}
	}
	return nil
}

// stopWaypoint stops a waypoint's pod and removes its file.
func (f *Files) stopWaypoint(key types.NamespacedName) error {
	f.mu.Lock()
	w := f.waypoints[key]
	f.mu.Unlock()
	if w == nil {
		return nil
	}
	err := f.sandbox().stop(w.pod)
	if errors.Is(err, errDel) {
		return err // kept: tried again on the next sync or Close
	}
	f.mu.Lock()
	delete(f.waypoints, key)
	f.mu.Unlock()
	if rerr := os.Remove(w.file); rerr != nil && !os.IsNotExist(rerr) {
		err = errors.Join(err, rerr)
	}
	f.log().Info("waypoint stopped", "node", f.Node, "gateway", key.String())
	return err
}

// freeAddr returns the highest address of prefix that no Pod (pods) or
// Service of the directory and no running waypoint holds, leaving out the
// network's first two (the gateway) and its broadcast address.
func (f *Files) freeAddr(prefix netip.Prefix, s *model.Snapshot, pods bool) (netip.Addr, error) {
	if !prefix.IsValid() || !prefix.Addr().Is4() || prefix.Bits() > 29 {
		return netip.Addr{}, fmt.Errorf("range %v: want an IPv4 prefix of /29 or wider", prefix)
	}
	prefix = prefix.Masked()
	held := map[netip.Addr]bool{}
	if pods {
		for _, p := range s.Pods {
			if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
				held[a] = true
			}
		}
	} else {
		for _, svc := range s.Services {
			for _, ip := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
				if a, err := netip.ParseAddr(ip); err == nil {
					held[a] = true
				}
			}
		}
	}
	f.mu.Lock()
	for _, w := range f.waypoints {
		held[w.pod.IP], held[w.svc] = true, true
	}
	f.mu.Unlock()
	first := prefix.Addr().Next().Next()
	last := lastAddr(prefix).Prev() // not the broadcast address
	for a := last; a.Compare(first) >= 0; a = a.Prev() {
		if !held[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("range %v: no free address", prefix)
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	return netip.AddrFrom4(b)
}

// writeObjects writes objects as one YAML file, atomically: a hidden
// temporary file (the directory's readers skip hidden files) renamed over
// it.
func writeObjects(path string, objs ...any) error {
	var out []byte
	out = append(out, "# Written by the node runner, which plays the waypoint deployer and the\n# kubelet here: the waypoint's Service and pod. Removed with the Gateway.\n"...)
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return err
		}
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, b...)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
