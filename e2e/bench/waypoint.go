package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/proc"
	"github.com/zmesh/zmesh/identity"
)

// The waypoint path. With no API server and no deployer here, the bench
// writes what they would hold into zmeshd's config directory: the
// Gateway, the Service and Pod the deployer's Deployment yields for it
// (deployer.Desired, the controller's own objects), the pod on node-3 at
// an address of node-3's pod range; node-3's runner makes the pod's
// network through the node's CNI chain, and the bench runs the pod's
// container in it as the manifest says (command, args, downward-API env),
// its volumes standing in as files. The echo Service (the mesh server pod behind a VIP) is
// labelled to use it.
const (
	waypointGateway = "waypoint"
	waypointToken   = "token-waypoint-bench-waypoint"
	echoService     = "echo"
	grpcPort        = 8079
	// The waypoint's Prometheus and readiness ports, as the deployer
	// declares them.
	waypointMetricsPort = 15020
	waypointReadyPort   = 15021
)

var (
	echoVIP         = netip.MustParseAddr("10.96.0.10")
	waypointVIP     = netip.MustParseAddr("10.96.0.2")
	waypointPodAddr = podAddr(2, 2) // in node-3's pod range
	// zmeshd as the waypoint's pod reaches it: a forwarder on node-3's
	// host to zmeshd's TLS port in the root namespace (a ClusterIP Service
	// in a cluster).
	controlPlane = netip.MustParseAddr("10.45.0.1")
)

// waypoint is the running waypoint pod.
type waypoint struct {
	*proc.Proc
	ns   *netenv.NS
	pod  string
	root string // its pod's file system stand-in (token, root cert)
}

// waypointDesired returns the deployer's objects for the bench's waypoint
// Gateway, and the Gateway.
func waypointDesired(xds netip.AddrPort) (*gatewayv1.Gateway, deployer.Objects, error) {
	gw := &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Name: waypointGateway, Namespace: meshServer.ns, UID: "bench-waypoint",
			Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: deployer.ClassName, Listeners: []gatewayv1.Listener{
			{Name: deployer.ListenerName, Port: deployer.ListenerPort, Protocol: deployer.ListenerProtocol},
		}},
	}
	o, err := deployer.Desired(gw, deployer.Options{Image: "zmesh/waypoint:bench", XDSAddress: xds.String()})
	if err != nil {
		return nil, deployer.Objects{}, fmt.Errorf("waypoint gateway: %w", err)
	}
	return gw, o, nil
}

// waypointPod is the pod of the deployer's Deployment, scheduled on
// node-3 at waypointPodAddr, Running and Ready (ready tells zmeshd it is
// an endpoint of the waypoint's Service).
func waypointPod(o deployer.Objects) *corev1.Pod {
	tmpl := o.Deployment.Spec.Template
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: o.Deployment.Namespace, Name: o.Deployment.Name + "-bench", Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec:       *tmpl.Spec.DeepCopy(),
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: waypointPodAddr.String(),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	pod.Spec.NodeName = proxyNode
	pod.UID = model.FilePodUID(pod.Namespace, pod.Name)
	return pod
}

// waypointYAML is the Gateway, its Service (with a cluster IP) and its
// pod, as one config-directory file.
func waypointYAML(gw *gatewayv1.Gateway, o deployer.Objects, pod *corev1.Pod) (string, error) {
	svc := o.Service.DeepCopy()
	svc.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	svc.Spec.ClusterIP = waypointVIP.String()
	svc.OwnerReferences = nil
	var b strings.Builder
	for i, obj := range []any{gw, svc, pod} {
		y, err := yaml.Marshal(obj)
		if err != nil {
			return "", err
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(y)
	}
	return b.String(), nil
}

// containerArgs is the waypoint container's command line as the bench
// runs it: the manifest's args, then the volumes' paths moved to files
// of the bench (a later flag wins), no access log (nginx and haproxy log
// nothing either) and warnings only.
func containerArgs(c corev1.Container, root, rootCert string) []string {
	args := append([]string{}, c.Args...)
	return append(args, "--root-cert="+rootCert, "--token-file="+filepath.Join(root, "token"),
		"--access-log=", "--log-level=warn")
}

// containerEnv resolves the downward-API env of the manifest.
func containerEnv(c corev1.Container, pod *corev1.Pod) ([]string, error) {
	var out []string
	for _, e := range c.Env {
		v := e.Value
		if f := e.ValueFrom; f != nil && f.FieldRef != nil {
			switch f.FieldRef.FieldPath {
			case "metadata.name":
				v = pod.Name
			case "metadata.namespace":
				v = pod.Namespace
			case "spec.nodeName":
				v = pod.Spec.NodeName
			case "status.podIP":
				v = pod.Status.PodIP
			case "spec.serviceAccountName":
				v = pod.Spec.ServiceAccountName
			default:
				return nil, fmt.Errorf("env %s: field %s not resolved by the bench", e.Name, f.FieldRef.FieldPath)
			}
		} else if e.ValueFrom != nil {
			return nil, fmt.Errorf("env %s: only fieldRef sources are resolved by the bench", e.Name)
		}
		out = append(out, e.Name+"="+v)
	}
	return out, nil
}

// startWaypoint runs the waypoint's container in its pod (which node-3's
// runner made through the node's CNI chain) and waits for its readiness
// probe (it is ready once zmeshd's config is in).
func (e *env) startWaypoint(ctx context.Context, o deployer.Objects, pod *corev1.Pod) error {
	rp := e.node(proxyNode).runner.Pod(pod.Namespace, pod.Name)
	if rp == nil || rp.IP != waypointPodAddr {
		return fmt.Errorf("the waypoint's pod %s/%s did not start on %s at %s", pod.Namespace, pod.Name, proxyNode, waypointPodAddr)
	}
	ns := rp.NS
	if err := sysctl(ns, benchSysctls...); err != nil {
		return err
	}
	root := filepath.Join(e.tmp, "waypoint")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "token"), []byte(waypointToken), 0o600); err != nil {
		return err
	}
	c := o.Deployment.Spec.Template.Spec.Containers[0]
	envv, err := containerEnv(c, pod)
	if err != nil {
		return err
	}
	if len(c.Command) != 1 || c.Command[0] != "waypoint" {
		return fmt.Errorf("the deployer's container runs %q, the bench runs bin/waypoint", c.Command)
	}
	args := append(envv, filepath.Join(e.binDir, "waypoint"))
	args = append(args, containerArgs(c, root, filepath.Join(e.caDir, identity.FileRootCert))...)
	p, err := startIn(ctx, ns, filepath.Join(e.tmp, "waypoint.log"), "env", args...)
	if err != nil {
		return fmt.Errorf("waypoint: %w", err)
	}
	e.defer_(p.Stop)
	e.wp = &waypoint{Proc: p, ns: ns, pod: pod.Name, root: root}
	ready := fmt.Sprintf("http://%s/healthz/ready", netip.AddrPortFrom(waypointPodAddr, waypointReadyPort))
	if err := proc.WaitFor(ctx, 60*time.Second, func() bool {
		_, err := e.wp.get(ctx, ready)
		return err == nil || !p.Running()
	}); err != nil || !p.Running() {
		return fmt.Errorf("waypoint not ready in 60 s (%v):\n%s", err, proc.Tail(p.Log(), 20))
	}
	return nil
}

// get fetches a URL of the waypoint's pod from inside its namespace.
func (w *waypoint) get(ctx context.Context, url string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return w.ns.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// requests is the waypoint's istio_requests_total, summed.
func (w *waypoint) requests(ctx context.Context) (float64, error) {
	body, err := w.get(ctx, fmt.Sprintf("http://%s/stats/prometheus", netip.AddrPortFrom(waypointPodAddr, waypointMetricsPort)))
	if err != nil {
		return 0, err
	}
	return sumMetric(body, "istio_requests_total"), nil
}

// sumMetric sums a Prometheus text exposition's samples of one metric.
func sumMetric(body, name string) float64 {
	var sum float64
	for line := range strings.SplitSeq(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// waypointVersions is syncVersions for the waypoint.
func (e *env) waypointVersions(ctx context.Context) (map[string]string, error) {
	return e.syncVersionsOf(ctx, func(_, kind, pod string) bool { return kind == "router" && pod == e.wp.pod })
}

// measureWaypointScale binds services×routes to the waypoint (a file
// dropped into zmeshd's config directory), times until the waypoint has
// acknowledged it, and measures its private memory before, at the peak
// and once settled; then takes the file away again (the ztunnel state
// measurement after it counts its own services).
func (e *env) measureWaypointScale(ctx context.Context, services, routes int) (*report.WaypointScale, error) {
	pid := e.wp.Pid()
	m := &report.WaypointScale{Services: services, RoutesPerService: routes}
	if err := e.waitSyncedOf(ctx, e.waypointVersions, nil); err != nil {
		return nil, fmt.Errorf("waypoint not synced before the scale step: %w", err)
	}
	time.Sleep(2 * time.Second)
	m.IdleAnon = statusBytes(pid, "RssAnon")
	before, err := e.waypointVersions(ctx)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(e.meshDir, "91-waypoint-scale.yaml")
	peak := sampleAnonPeak([]int{pid})
	start := time.Now()
	if err := os.WriteFile(file, []byte(waypointScaleYAML(services, routes)), 0o644); err != nil {
		peak()
		return nil, err
	}
	defer func() {
		os.Remove(file)
		if b, err := e.waypointVersions(context.WithoutCancel(ctx)); err == nil {
			e.waitSyncedOf(context.WithoutCancel(ctx), e.waypointVersions, b)
		}
	}()
	err = e.waitSyncedOf(ctx, e.waypointVersions, before)
	m.ApplySeconds = time.Since(start).Seconds()
	time.Sleep(time.Second)
	m.PeakAnon = peak()[0]
	if err != nil {
		return nil, fmt.Errorf("waypoint did not acknowledge %d services × %d routes: %w", services, routes, err)
	}
	// As for ztunnel's state: the figure once the runtime has returned
	// the update's garbage (RssAnon has not fallen for 10 s, at most 45 s).
	m.LoadedAnon = statusBytes(pid, "RssAnon")
	for still, i := 0, 0; still < 10 && i < 45; i++ {
		time.Sleep(time.Second)
		if v := statusBytes(pid, "RssAnon"); v < m.LoadedAnon*0.995 {
			m.LoadedAnon, still = v, 0
		} else {
			still++
		}
	}
	if !e.wp.Running() {
		return nil, fmt.Errorf("the waypoint exited during the scale step:\n%s", proc.Tail(e.wp.Log(), 20))
	}
	return m, nil
}

// waypointScaleYAML is n Services bound to the waypoint, each with a
// VirtualService of r routes (a path prefix each, the last one the
// catch-all).
func waypointScaleYAML(n, r int) string {
	var b strings.Builder
	b.Grow(n * (350 + r*160))
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: wsvc-%d\n  namespace: %s\n  labels: {%s: %s}\nspec:\n  clusterIP: 10.98.%d.%d\n  selector: {app: wsvc-%d}\n  ports:\n    - {name: http, port: 80, targetPort: 8080}\n",
			i, meshServer.ns, model.LabelUseWaypoint, waypointGateway, i/250, i%250+1, i)
		fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: wsvc-%d\n  namespace: %s\nspec:\n  hosts: [wsvc-%d.%s.svc.cluster.local]\n  http:\n", i, meshServer.ns, i, meshServer.ns)
		for j := range r {
			if j < r-1 {
				fmt.Fprintf(&b, "    - match: [{uri: {prefix: /r%d}}]\n      route: [{destination: {host: wsvc-%d.%s.svc.cluster.local}}]\n      timeout: %ds\n", j, i, meshServer.ns, j+1)
			} else {
				fmt.Fprintf(&b, "    - route: [{destination: {host: wsvc-%d.%s.svc.cluster.local}}]\n", i, meshServer.ns)
			}
		}
	}
	return b.String()
}
