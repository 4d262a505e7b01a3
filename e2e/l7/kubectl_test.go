package l7

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// TestKubectlExecLogsPortForward: `kubectl exec`, `kubectl logs` and a
// port-forward reach a meshed pod on a netns node through the real API
// server, which dials the node runner's streaming API at the endpoint its
// Node advertises (authenticated both ways by the cluster CA): the command
// runs in the pod (its hostname is the pod's name) and the forwarded port is
// the pod's app.
func TestKubectlExecLogsPortForward(t *testing.T) {
	const manifest = `apiVersion: v1
kind: Namespace
metadata:
  name: kubectl
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: kubectl, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers: [{name: app, image: podapp}]
`
	mesh.ApplyManifest(t, manifest, "kubectl")
	pods := mesh.MustWaitPods(t, "kubectl", 1)
	web := pods["web"]

	if got := strings.TrimSpace(mesh.MustKubectl(t, "exec", "-n", "kubectl", "web", "--", "hostname")); got != "web" {
		t.Errorf("kubectl exec web -- hostname: %q, want the pod's name", got)
	}
	// The command runs in the pod's network namespace: it has the pod's IP.
	if out := mesh.MustKubectl(t, "exec", "-n", "kubectl", "web", "--", "ip", "-brief", "address"); !strings.Contains(out, web.IP.String()+"/") {
		t.Errorf("kubectl exec web -- ip address: %q, want the pod's address %s", out, web.IP)
	}
	if out, err := mesh.Kubectl(t.Context(), "exec", "-n", "kubectl", "web", "--", "sh", "-c", "exit 7"); err == nil || !strings.Contains(out+err.Error(), "exit code 7") {
		t.Errorf("kubectl exec with exit 7: %v: %s, want exit code 7", err, out)
	}
	// The echo images' client is on the app's PATH.
	if out := mesh.MustKubectl(t, "exec", "-n", "kubectl", "web", "--", "sh", "-c", "command -v "+podapp.ClientName); !strings.Contains(out, "/"+podapp.ClientName) {
		t.Errorf("the client is not on the pod's PATH: %q", out)
	}
	if _, err := mesh.Kubectl(t.Context(), "logs", "-n", "kubectl", "web", "--tail=5"); err != nil {
		t.Errorf("kubectl logs: %v", err)
	}

	// A port-forward through the API server, as kubectl port-forward does.
	req := mesh.Env.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace("kubectl").Name("web").SubResource("portforward")
	rt, upgrader, err := spdy.RoundTripperFor(mesh.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:8080"}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fwErr := make(chan error, 1)
	go func() { fwErr <- fw.ForwardPorts() }()
	t.Cleanup(func() { close(stop); <-fwErr })
	select {
	case <-ready:
	case err := <-fwErr:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("port-forward not ready in 30 s")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v: %v", ports, err)
	}
	u := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0].Local), Path: "/"}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatalf("GET through the port-forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e, err := podapp.ParseEcho(body)
	if err != nil || e.Pod != "web" {
		t.Fatalf("GET through the port-forward: %d %q (%v), want the echo of pod web", resp.StatusCode, body, err)
	}
	t.Logf("exec, logs and port-forward to kubectl/web on %s through the API server", web.Node.Name)
}

// TestProxyConfigThroughPortForward: `zmeshctl proxy-config` given a
// waypoint's name and no --admin-address reaches the waypoint pod's admin
// port through the API server's port-forward, as istioctl does, and shows
// the waypoint's clusters (its namespace's Service among them).
func TestProxyConfigThroughPortForward(t *testing.T) {
	const manifest = `apiVersion: v1
kind: Namespace
metadata:
  name: pc
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: pc}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	mesh.ApplyManifest(t, manifest, "pc")
	zmeshctl(t, "waypoint", "apply", "-n", "pc", "--enroll-namespace", "--wait")
	until(t, 30*time.Second, "proxy-config clusters of waypoint pc/waypoint shows web.pc", func() error {
		out, err := mesh.ZmeshctlRun(t.Context(), "proxy-config", "clusters", "waypoint", "-n", "pc")
		if err != nil {
			return fmt.Errorf("zmeshctl proxy-config clusters waypoint -n pc: %v: %s", err, out)
		}
		if !strings.Contains(out, "web.pc.svc.cluster.local") {
			return fmt.Errorf("no cluster of web.pc.svc.cluster.local in:\n%s", out)
		}
		t.Logf("$ zmeshctl proxy-config clusters waypoint -n pc\n%s", strings.TrimSpace(out))
		return nil
	})
}
