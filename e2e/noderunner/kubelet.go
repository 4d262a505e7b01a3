package noderunner

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// Kubelet is the Kubernetes mode of the node runner: the part of a kubelet
// the mesh depends on, played honestly against a real API server. It keeps
// its Node object Ready (status and Lease heartbeats), watches the pods
// bound to its node, and for each one creates a network namespace, runs the
// node's CNI configuration through libcni from the node's host namespace
// (whatever the conflist in ConfDir holds when the pod starts: on a meshed
// node, the primary plugins and then zmesh-cni), starts the pod's process
// inside the namespace and reports the pod Running and Ready with its IP.
// When the pod is deleted it stops the process, runs CNI DEL, removes the
// namespace and lets the deletion finish. hostNetwork pods run in the
// node's host namespace with RunHostNetwork, and are left alone without it
// (a harness's own DaemonSet stand-ins).
type Kubelet struct {
	Client kubernetes.Interface
	Node   string
	// Host is the node's host namespace: the CNI plugins run there and
	// probes are sent from there.
	Host *netenv.NS
	// HostIP is the node's address on the underlay (Node InternalIP).
	HostIP netip.Addr
	// PodCIDR is the node's pod range (Node spec.podCIDR).
	PodCIDR netip.Prefix
	// CNIBinDir and CNIConfDir are the node's CNI directories.
	CNIBinDir, CNIConfDir string
	// App returns the command to run as the pod's process (started inside
	// the pod's namespace); nil runs no process.
	App func(pod *corev1.Pod) *exec.Cmd
	// Images runs pods whose image is a zmesh image as that binary (see
	// Images); nil runs App for every pod.
	Images *Images
	// RunHostNetwork runs hostNetwork pods of zmesh images in the node's
	// host namespace; without it they are left alone (a harness's own
	// stand-ins for components it runs as processes).
	RunHostNetwork bool
	// NetnsDir, when set, is a shared mount (see SharedDir) where each
	// pod's network namespace is also mounted and whose path CNI is given,
	// so that pods with mount namespaces of their own see the namespaces
	// made after they started.
	NetnsDir string
	// StreamingEndpoint, when valid, is where the API server reaches the
	// runner's streaming API (exec, port-forward, logs; see Streaming):
	// the Node advertises its address as ExternalIP and its port as the
	// kubelet's endpoint.
	StreamingEndpoint netip.AddrPort
	// AppPath is the PATH of commands exec'd in pods that run the App
	// (see Streaming.AppPath).
	AppPath string
	// AppDNS is the cluster DNS of commands exec'd in pods that run the App
	// (see Streaming.AppDNS).
	AppDNS netip.Addr
	Log    *slog.Logger

	mu   sync.Mutex
	pods map[types.UID]*RunningPod
	// done holds the uids torn down, so late events do not start them again.
	done map[types.UID]bool
}

// RunningPod is a pod the kubelet started.
type RunningPod struct {
	UID             types.UID
	Namespace, Name string
	NS              *netenv.NS
	IP              netip.Addr
	// CNIAdd is how long CNI ADD took (with zmesh-cni chained: until
	// ztunnel acknowledged the pod).
	CNIAdd time.Duration
	// Container is the zmesh container the pod runs (see Images), nil for
	// the App.
	Container *corev1.Container
	// HostNetwork pods run in the node's host namespace (NS) at its
	// address.
	HostNetwork bool
	// Restarts counts the process's restarts after it exited.
	Restarts int
	rt       *libcni.RuntimeConf

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd exits
	stopping chan struct{} // closed when the pod is being stopped
}

// Register creates (or updates) the Node object and reports it Ready.
func (k *Kubelet) Register(ctx context.Context, labels map[string]string) error {
	if k.Log == nil {
		k.Log = slog.Default()
	}
	lbl := map[string]string{"kubernetes.io/hostname": k.Node, "kubernetes.io/os": "linux"}
	for key, v := range labels {
		lbl[key] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: k.Node, Labels: lbl},
		Spec:       corev1.NodeSpec{PodCIDR: k.PodCIDR.String(), PodCIDRs: []string{k.PodCIDR.String()}},
	}
	if _, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", k.Node, err)
	}
	return k.heartbeat(ctx)
}

// heartbeat writes the Ready condition and renews the node's Lease, as a
// kubelet does, so the node lifecycle controller keeps it schedulable.
func (k *Kubelet) heartbeat(ctx context.Context) error {
	// The node lifecycle controller writes the node too (taints).
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return k.beat(ctx) })
}

func (k *Kubelet) beat(ctx context.Context) error {
	now := metav1.Now()
	node, err := k.Client.CoreV1().Nodes().Get(ctx, k.Node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node.Status.Capacity, node.Status.Allocatable = capacity, capacity
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.HostIP.String()}, {Type: corev1.NodeHostName, Address: k.Node}}
	if k.StreamingEndpoint.IsValid() {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: k.StreamingEndpoint.Addr().String()})
		node.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(k.StreamingEndpoint.Port())
	}
	node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.37.2-zmesh-e2e", OperatingSystem: "linux", Architecture: "amd64"}
	trans := now
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			trans = c.LastTransitionTime
		}
	}
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "zmesh e2e node runner",
		LastHeartbeatTime: now, LastTransitionTime: trans,
	}}
	if _, err := k.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", k.Node, err)
	}
	leases := k.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	renew := metav1.NewMicroTime(time.Now())
	dur := int32(40)
	lease, err := leases.Get(ctx, k.Node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.Node, Namespace: corev1.NamespaceNodeLease},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &k.Node, LeaseDurationSeconds: &dur, RenewTime: &renew},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &renew
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// Run serves the node's pods until ctx ends, then tears every pod it
// started down (process, CNI DEL, namespace) and returns.
func (k *Kubelet) Run(ctx context.Context) error {
	if k.Log == nil {
		k.Log = slog.Default()
	}
	k.mu.Lock()
	k.pods, k.done = map[types.UID]*RunningPod{}, map[types.UID]bool{}
	k.mu.Unlock()
	inf := informers.NewSharedInformerFactoryWithOptions(k.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + k.Node }))
	podInf := inf.Core().V1().Pods()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	})
	lister := podInf.Lister()
	inf.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := k.heartbeat(ctx); err != nil && ctx.Err() == nil {
					k.Log.Warn("node heartbeat", "reason", err.Error())
				}
			}
		}
	})
	// Each pod is synced on a goroutine of its own, as the kubelet's pod
	// workers do: a pod's start (CNI ADD until ztunnel took it, the
	// process, the first probe) or stop (the process's grace, CNI DEL)
	// takes seconds on a loaded machine, and must hold up no other pod.
	// The queue hands a key out again only once it is Done, so one pod's
	// syncs never overlap.
	var syncs sync.WaitGroup
	wg.Go(func() {
		for {
			key, quit := queue.Get()
			if quit {
				return
			}
			syncs.Go(func() {
				defer queue.Done(key)
				if err := k.sync(ctx, lister, key); err != nil && ctx.Err() == nil {
					k.Log.Warn("pod sync", "pod", key, "reason", err.Error())
					queue.AddRateLimited(key)
				} else {
					queue.Forget(key)
				}
			})
		}
	})
	<-ctx.Done()
	queue.ShutDown()
	inf.Shutdown()
	wg.Wait()
	syncs.Wait()
	// Teardown with a fresh context: ctx is over.
	k.mu.Lock()
	pods := make([]*RunningPod, 0, len(k.pods))
	for _, p := range k.pods {
		pods = append(pods, p)
	}
	k.mu.Unlock()
	// Pods in their own namespaces first: their CNI DEL may need the node
	// agents that run with hostNetwork.
	slices.SortStableFunc(pods, func(a, b *RunningPod) int {
		switch {
		case a.HostNetwork == b.HostNetwork:
			return 0
		case b.HostNetwork:
			return -1
		}
		return 1
	})
	var errs []error
	for _, p := range pods {
		errs = append(errs, k.stop(context.Background(), p))
	}
	return errors.Join(errs...)
}

// sync brings one pod to what the API says.
func (k *Kubelet) sync(ctx context.Context, lister listersv1.PodLister, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := lister.Pods(ns).Get(name)
	gone := apierrors.IsNotFound(err)
	if err != nil && !gone {
		return err
	}
	// Whatever we run under this name but with another uid (or at all, if
	// the pod is gone) stops.
	k.mu.Lock()
	var stale []*RunningPod
	for uid, p := range k.pods {
		if p.Namespace == ns && p.Name == name && (gone || uid != pod.UID) {
			stale = append(stale, p)
		}
	}
	k.mu.Unlock()
	for _, p := range stale {
		if err := k.stop(ctx, p); err != nil {
			return err
		}
	}
	if gone || (pod.Spec.HostNetwork && !k.RunHostNetwork) {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		k.mu.Lock()
		p := k.pods[pod.UID]
		k.mu.Unlock()
		if p != nil {
			if err := k.stop(ctx, p); err != nil {
				return err
			}
		}
		// The kubelet's final delete, once the pod's containers are gone.
		zero := int64(0)
		err := k.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	k.mu.Lock()
	_, running := k.pods[pod.UID]
	done := k.done[pod.UID]
	k.mu.Unlock()
	if running || done {
		return nil
	}
	return k.start(ctx, pod)
}

// sandbox is the runtime part of the Kubelet's pods.
func (k *Kubelet) sandbox() sandbox {
	return sandbox{host: k.Host, binDir: k.CNIBinDir, confDir: k.CNIConfDir, app: k.App, images: k.Images, hostIP: k.HostIP, netnsDir: k.NetnsDir}
}

func (k *Kubelet) start(ctx context.Context, pod *corev1.Pod) error {
	started := time.Now()
	// host-local picks the address from the node's range.
	p, err := k.sandbox().start(ctx, pod, netip.Addr{})
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.pods[pod.UID] = p
	k.mu.Unlock()
	ready := p.Container == nil || probeReady(ctx, k.Host, p.Container, p.IP)
	if err := k.writeStatus(ctx, pod, p, ready); err != nil {
		return err
	}
	if p.Container != nil && p.Container.ReadinessProbe != nil {
		go k.probe(ctx, pod, p, ready)
	}
	if p.Container != nil {
		go k.supervise(ctx, pod, p)
	}
	// Where a slow start went: the sandbox's CNI ADD, the whole start,
	// and since the pod was created (the wait for a worker included).
	k.Log.Info("pod running", "pod", pod.Namespace+"/"+pod.Name, "ip", p.IP, "ready", ready,
		"cni_add", p.CNIAdd.Round(time.Millisecond).String(), "took", time.Since(started).Round(time.Millisecond).String(),
		"since_created", time.Since(pod.CreationTimestamp.Time).Round(time.Second).String())
	return nil
}

// probe runs a zmesh container's readiness probe every period until the
// pod's process exits, and reports each change of its result.
func (k *Kubelet) probe(ctx context.Context, pod *corev1.Pod, p *RunningPod, ready bool) {
	period := probePeriod(p.Container)
	// The first probes come quickly: a process usually needs well under a
	// period to become ready, and tests wait for it.
	wait := 200 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.stopCh():
			return
		case <-time.After(wait):
		}
		if ready {
			wait = period
		} else {
			wait = min(2*wait, period)
		}
		now := probeReady(ctx, k.Host, p.Container, p.IP)
		if now == ready {
			continue
		}
		if err := k.writeStatus(ctx, pod, p, now); err != nil {
			k.Log.Warn("pod readiness", "pod", pod.Namespace+"/"+pod.Name, "reason", err.Error())
			continue
		}
		ready = now
		k.Log.Info("pod readiness", "pod", pod.Namespace+"/"+pod.Name, "ready", ready)
	}
}

// supervise starts a zmesh container's process again when it exits while
// the pod lives (restartPolicy Always, the only one of Deployments and
// DaemonSets), after a back-off that doubles from 1 s to 30 s and starts
// over once a run lasted a minute.
func (k *Kubelet) supervise(ctx context.Context, pod *corev1.Pod, p *RunningPod) {
	backoff := time.Second
	for {
		p.mu.Lock()
		exited := p.exited
		p.mu.Unlock()
		started := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-p.stopCh():
			return
		case <-exited:
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second
		}
		k.Log.Warn("container exited", "pod", pod.Namespace+"/"+pod.Name, "restarts", p.Restarts, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-p.stopCh():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
		p.mu.Lock()
		stopping := p.stopping != nil && isClosed(p.stopping)
		p.mu.Unlock()
		if stopping {
			return
		}
		if err := k.sandbox().run(ctx, pod, p); err != nil {
			k.Log.Warn("container restart", "pod", pod.Namespace+"/"+pod.Name, "reason", err.Error())
			// The loop's next pass waits on the old, closed channel: try again
			// after the next back-off.
			continue
		}
		p.mu.Lock()
		p.Restarts++
		p.mu.Unlock()
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (k *Kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, p *RunningPod, ready bool) error {
	for attempt := 0; ; attempt++ {
		cur, err := k.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != p.UID {
			return nil
		}
		now := metav1.Now()
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP = p.IP.String()
		cur.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
		cur.Status.HostIP = k.HostIP.String()
		cur.Status.HostIPs = []corev1.HostIP{{IP: k.HostIP.String()}}
		if cur.Status.StartTime == nil {
			cur.Status.StartTime = &now
		}
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: st, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: st, LastTransitionTime: now},
		}
		cur.Status.ContainerStatuses = nil
		for _, c := range cur.Spec.Containers {
			p.mu.Lock()
			restarts := int32(p.Restarts)
			p.mu.Unlock()
			cur.Status.ContainerStatuses = append(cur.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, Ready: ready, Started: new(true), RestartCount: restarts,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *cur.Status.StartTime}},
			})
		}
		_, err = k.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		return err
	}
}

// stop ends a pod: its process, CNI DEL, its namespace.
func (k *Kubelet) stop(_ context.Context, p *RunningPod) error {
	k.mu.Lock()
	if k.pods[p.UID] != p {
		k.mu.Unlock()
		return nil
	}
	k.mu.Unlock()
	err := k.sandbox().stop(p)
	if errors.Is(err, errDel) {
		return err // retried
	}
	k.mu.Lock()
	delete(k.pods, p.UID)
	k.done[p.UID] = true
	k.mu.Unlock()
	k.Log.Info("pod stopped", "pod", p.Namespace+"/"+p.Name)
	return err
}

// Pod returns the running pod of that name, or nil.
func (k *Kubelet) Pod(namespace, name string) *RunningPod {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// PodOf returns a running pod of the namespace whose zmesh container is
// named container (a DaemonSet's pod on this node), or nil.
func (k *Kubelet) PodOf(namespace, container string) *RunningPod {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pods {
		if p.Namespace == namespace && p.Container != nil && p.Container.Name == container {
			return p
		}
	}
	return nil
}

// SetReady reports a running pod's readiness, as a readiness probe's
// result would.
func (k *Kubelet) SetReady(ctx context.Context, namespace, name string, ready bool) error {
	p := k.Pod(namespace, name)
	if p == nil {
		return fmt.Errorf("pod %s/%s does not run on %s", namespace, name, k.Node)
	}
	pod, err := k.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	return k.writeStatus(ctx, pod, p, ready)
}

// Probe is a kubelet-style probe: a TCP connection from the node's host
// namespace (no source address bound) to the pod, and an HTTP GET over it.
func (k *Kubelet) Probe(ctx context.Context, pod netip.AddrPort) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := k.Host.Dial(ctx, "tcp", pod.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n", pod)
	b := make([]byte, 4096)
	n, err := readAll(c, b)
	if n == 0 {
		return "", fmt.Errorf("probe %s: no answer: %w", pod, err)
	}
	return string(b[:n]), nil
}

func readAll(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// AppCommand is the usual App: this same executable, which turns into the
// pod's app when it sees env (see e2e/podapp), with its output in logDir.
// env+"_POD" carries the pod's metadata and containers as JSON, for the
// app to serve the containerPorts and report the labels.
func AppCommand(env string, logDir string) func(pod *corev1.Pod) *exec.Cmd {
	return func(pod *corev1.Pod) *exec.Cmd {
		exe, _ := os.Executable()
		cmd := exec.Command(exe)
		spec, _ := json.Marshal(corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, Labels: pod.Labels},
			Spec:       corev1.PodSpec{Containers: pod.Spec.Containers},
		})
		cmd.Env = append(os.Environ(), env+"="+pod.Namespace+"/"+pod.Name, env+"_POD="+string(spec))
		if f, err := os.Create(filepath.Join(logDir, "pod-"+pod.Namespace+"-"+pod.Name+"-"+string(pod.UID)[:8]+".log")); err == nil {
			cmd.Stdout, cmd.Stderr = f, f
		}
		// Its own process group (a Ctrl-C reaches the runner, which stops
		// pods in order); killed if the runner dies without doing so.
		// A UTS namespace of its own, where the app names its host after
		// the pod, as a container's hostname is.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWUTS}
		return cmd
	}
}

// Count is how many pods run.
func (k *Kubelet) Count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.pods)
}

// Streaming returns the streaming API of the pods this runner runs, for
// callers clientCAs verifies (the API server's kubelet client certificate).
func (k *Kubelet) Streaming(clientCAs *x509.CertPool) *Streaming {
	return &Streaming{Node: k.Node, Client: k.Client, ClientCAs: clientCAs, Pod: k.runningPod, AppPath: k.AppPath, AppDNS: k.AppDNS, Log: k.Log}
}

// runningPod finds a pod this runner runs, and the file its output goes to.
func (k *Kubelet) runningPod(namespace, name string) (*RunningPod, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pods {
		if p.Namespace != namespace || p.Name != name {
			continue
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		var logFile string
		if p.cmd != nil {
			if f, ok := p.cmd.Stdout.(*os.File); ok {
				logFile = f.Name()
			}
		}
		return p, logFile
	}
	return nil, ""
}
