package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/podapp"
	"github.com/zmesh/zmesh/internal/testutil"
)

// webYAML is a namespace with a client and two versions of service web,
// and an HTTPRoute that sends all of web to v2: only a waypoint applies
// it, so with none both versions answer.
const webYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: curl, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: curl, namespace: shop}
spec:
  selector: {matchLabels: {app: curl}}
  template:
    metadata: {labels: {app: curl}}
    spec:
      serviceAccountName: curl
      containers: [{name: curl, image: curlimages/curl}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  selector: {matchLabels: {app: web, version: v1}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {matchLabels: {app: web, version: v2}}
  template:
    metadata: {labels: {app: web, version: v2}}
    spec:
      containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v2, port: 80}]
`

// webService is service web, bound to waypoint wp or not.
func webService(bound bool) string {
	labels := ""
	if bound {
		labels = "\n  labels: {istio.io/use-waypoint: wp}"
	}
	return `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop` + labels + `
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
}

// waypointYAML is waypoint Gateway wp, whose parametersRef sets the
// environment variable ZMESH_TEST_FROM_PARAMETERS=value in the waypoint's
// container with the patch under key (the deployer knows "deployment").
func waypointYAML(key, value string) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  infrastructure:
    parametersRef: {group: "", kind: ConfigMap, name: wp-params}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: wp-params, namespace: shop}
data:
  %s: |
    spec:
      template:
        spec:
          containers:
          - name: waypoint
            env:
            - {name: ZMESH_TEST_FROM_PARAMETERS, value: %s}
`, key, value)
}

// A waypoint Gateway added to the directory of a running local mesh gets
// its waypoint, as the deployer would start it: the process runs with the
// environment its parametersRef ConfigMap adds, and requests to the
// service bound to it are routed by the HTTPRoute (all to v2, where
// without the waypoint both versions answer). A change of its parameters
// restarts it with them. A version of its parameters
// with a misspelt key is rejected naming the key while the waypoint keeps
// running and serving. Removing the Gateway stops the waypoint: its process,
// its file in zmeshd's directory and the session's entry go, and after
// Ctrl-C nothing is left.
func TestLocalUpWaypointAddedLater(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("zmeshctl local up needs root (network namespaces, eBPF)")
	}
	bin := buildLocalBins(t)
	zmeshctl := filepath.Join(bin, "zmeshctl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in := filepath.Join(t.TempDir(), "shop")
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(in, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(in, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("shop.yaml", webYAML)
	write("web.yaml", webService(false))
	sessionPath := filepath.Join(t.TempDir(), "session.json")
	linksBefore := netenv.RootLinks()
	up, s := startLocalUp(t, ctx, zmeshctl, bin, in, sessionPath)
	if len(s.Waypoints) != 0 {
		t.Fatalf("waypoints at the start: %+v, want none", s.Waypoints)
	}
	session := func() Session {
		var s Session
		if b, err := os.ReadFile(sessionPath); err == nil {
			json.Unmarshal(b, &s)
		}
		return s
	}
	var web SessionService
	pods := map[string]SessionPod{}
	for _, p := range s.Pods {
		pods[p.Owner] = p
	}
	for _, svc := range s.Services {
		if svc.Name == "web" {
			web = svc
		}
	}
	client := inPod(pods["Deployment/curl"].NetNS)
	defer client.CloseIdleConnections()
	versions := func(n int) (map[string]int, []string) {
		got := map[string]int{}
		var ids []string
		for range n {
			// A connection each: ztunnel balances connections, not
			// requests.
			req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s:80/", web.ClusterIP), nil)
			req.Close = true
			resp, err := client.Do(req)
			if err != nil {
				got["error: "+err.Error()]++
				continue
			}
			var e podapp.Echo
			err = json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				got[fmt.Sprintf("status %d", resp.StatusCode)]++
				continue
			}
			got[e.Version]++
			ids = append(ids, strings.Join(e.Headers["X-Request-Id"], ","))
		}
		return got, ids
	}
	// No waypoint: ztunnel balances over both versions.
	testutil.Eventually(t, 30*time.Second, "both versions of web without a waypoint", func() error {
		if got, _ := versions(20); got["v1"] == 0 || got["v2"] == 0 {
			return fmt.Errorf("20 requests: %v", got)
		}
		return nil
	})

	// The Gateway and the binding are saved: the waypoint starts, with
	// its parameters, and the route applies.
	write("waypoint.yaml", waypointYAML("deployment", "one"))
	write("web.yaml", webService(true))
	added := time.Now()
	var wp SessionWaypoint
	testutil.Eventually(t, 2*time.Minute, "the added Gateway's waypoint in the session", func() error {
		s := session()
		if len(s.Waypoints) != 1 || s.Waypoints[0].Pid == 0 {
			return fmt.Errorf("session waypoints %+v (zmesh-local says:\n%s)", s.Waypoints, up.out.String())
		}
		wp = s.Waypoints[0]
		return nil
	})
	t.Logf("the added Gateway's waypoint runs: pid %d at %s, %s after the Gateway was saved", wp.Pid, wp.IP, time.Since(added).Round(100*time.Millisecond))
	checkEnv := func(pid int, value string) {
		t.Helper()
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !slices.Contains(strings.Split(string(env), "\x00"), "ZMESH_TEST_FROM_PARAMETERS="+value) {
			t.Errorf("waypoint pid %d environment: %v, want ZMESH_TEST_FROM_PARAMETERS=%s from its parametersRef ConfigMap", pid, err, value)
		}
	}
	checkEnv(wp.Pid, "one")
	routed := func() {
		t.Helper()
		testutil.Eventually(t, time.Minute, "web routed by the HTTPRoute through the waypoint", func() error {
			got, ids := versions(20)
			if got["v2"] != 20 || slices.Contains(ids, "") {
				return fmt.Errorf("20 requests: %v, want all v2 with an x-request-id (the waypoint's)", got)
			}
			return nil
		})
	}
	routed()

	// A change of its parameters restarts the waypoint with them, as a
	// Deployment rolls out.
	write("waypoint.yaml", waypointYAML("deployment", "two"))
	first := wp
	testutil.Eventually(t, 2*time.Minute, "the waypoint restarted with its new parameters", func() error {
		s := session()
		if len(s.Waypoints) != 1 || s.Waypoints[0].Pid == 0 || s.Waypoints[0].Pid == first.Pid {
			return fmt.Errorf("session waypoints %+v, want a new pid", s.Waypoints)
		}
		wp = s.Waypoints[0]
		return nil
	})
	if syscall.Kill(first.Pid, 0) == nil {
		t.Errorf("the first waypoint, pid %d, still runs after the restart", first.Pid)
	}
	checkEnv(wp.Pid, "two")
	routed()

	// A version whose parameters have a misspelt key is rejected naming
	// the key; the waypoint runs on (zmeshd does not read parameters, so
	// its traffic too).
	write("waypoint.yaml", waypointYAML("deploymnet", "three"))
	testutil.Eventually(t, time.Minute, "the bad Gateway reported", func() error {
		s := session()
		if len(s.Waypoints) != 1 || !strings.Contains(s.Waypoints[0].Rejected, "ConfigMap shop/wp-params (spec.infrastructure.parametersRef): data[deploymnet]: unknown key") {
			return fmt.Errorf("session waypoints %+v", s.Waypoints)
		}
		if s.Waypoints[0].Pid != wp.Pid {
			return fmt.Errorf("the waypoint pid %d became %d with a rejected Gateway", wp.Pid, s.Waypoints[0].Pid)
		}
		return nil
	})
	if got, _ := versions(10); got["v2"] != 10 {
		t.Errorf("with the rejected Gateway version: 10 requests %v, want all v2 through the last good waypoint", got)
	}

	// The Gateway goes: the waypoint and its file go.
	if err := os.Remove(filepath.Join(in, "waypoint.yaml")); err != nil {
		t.Fatal(err)
	}
	write("web.yaml", webService(false))
	testutil.Eventually(t, time.Minute, "the waypoint gone", func() error {
		if s := session(); len(s.Waypoints) != 0 {
			return fmt.Errorf("session waypoints %+v", s.Waypoints)
		}
		if syscall.Kill(wp.Pid, 0) == nil {
			return fmt.Errorf("waypoint pid %d still runs", wp.Pid)
		}
		if _, err := os.Stat(filepath.Join(s.Dir, "mesh", "zz-waypoint.shop.wp.yaml")); err == nil {
			return fmt.Errorf("the waypoint's Service and pod are still in zmeshd's directory")
		}
		return nil
	})
	testutil.Eventually(t, 30*time.Second, "both versions of web again", func() error {
		if got, _ := versions(20); got["v1"] == 0 || got["v2"] == 0 {
			return fmt.Errorf("20 requests: %v", got)
		}
		return nil
	})

	t.Logf("zmeshctl local up said:\n%s", up.out.String())
	up.stop(t)
	for _, l := range leftBehind(s, bin, sessionPath, linksBefore) {
		t.Errorf("left behind: %s", l)
	}
}

// buildLocalBins builds the local mesh's binaries into a temporary
// directory, with zmesh-local as this test binary (TestMain runs main
// under that name).
func buildLocalBins(t *testing.T) string {
	t.Helper()
	began := time.Now()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "../../cmd/zmeshctl", "../../cmd/zmeshd", "../../cmd/ztunnel",
		"../../cmd/zmesh-cni-agent", "../../cmd/zmesh-cni", "../../cmd/waypoint")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "zmesh-local")); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the mesh's binaries in %s", time.Since(began).Round(time.Second))
	return bin
}

// localUp is a running zmeshctl local up.
type localUp struct {
	cmd     *exec.Cmd
	out     *testutil.SyncBuffer
	exited  chan error
	stopped bool
}

// startLocalUp runs zmeshctl local up on in and waits for its session
// file; Cleanup stops it if the test did not.
func startLocalUp(t *testing.T, ctx context.Context, zmeshctl, bin, in, sessionPath string) (*localUp, Session) {
	t.Helper()
	began := time.Now()
	u := &localUp{out: &testutil.SyncBuffer{}, exited: make(chan error, 1)}
	u.cmd = exec.Command(zmeshctl, "local", "up", "-f", in, "--bin", bin, "--session", sessionPath)
	u.cmd.Stdout, u.cmd.Stderr = u.out, u.out
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { u.exited <- u.cmd.Wait() }()
	t.Cleanup(func() {
		if !u.stopped {
			u.cmd.Process.Signal(syscall.SIGINT)
			<-u.exited
		}
	})
	var s Session
	for {
		if b, err := os.ReadFile(sessionPath); err == nil && json.Unmarshal(b, &s) == nil {
			break
		}
		select {
		case err := <-u.exited:
			u.stopped = true
			t.Fatalf("zmeshctl local up exited (%v) before the mesh was up:\n%s", err, u.out.String())
		case <-ctx.Done():
			t.Fatalf("the mesh was not up in time:\n%s", u.out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("zmeshctl local up: the mesh was up in %s", time.Since(began).Round(100*time.Millisecond))
	return u, s
}

// stop sends Ctrl-C and waits for a clean exit.
func (u *localUp) stop(t *testing.T) {
	t.Helper()
	u.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-u.exited:
		u.stopped = true
		if err != nil {
			t.Errorf("zmeshctl local up after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("zmeshctl local up still runs a minute after Ctrl-C:\n%s", u.out.String())
	}
	if !strings.Contains(u.out.String(), "nothing else left") {
		t.Errorf("no clean cleanup line:\n%s", u.out.String())
	}
}
