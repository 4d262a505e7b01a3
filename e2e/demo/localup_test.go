package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/podapp"
	"github.com/zmesh/zmesh/internal/testutil"
)

// badYAML is added to Istio's scenario: an HTTPRoute whose backend does
// not exist (the API server stores it; zmeshd's status says
// ResolvedRefs=False) and an AuthorizationPolicy with a misspelt field
// (the API server refuses it).
const badYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ratings
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: ratings
    port: 9080
  rules:
  - backendRefs:
    - name: ratings-v9
      port: 9080
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: typo
spec:
  actoin: DENY
`

// Istio's ambient getting-started scenario (testdata/bookinfo: bookinfo,
// curl, a waypoint, the L7 policy and the 90/10 route, as the docs have
// them) runs with `zmeshctl local up -f` as a user would: the Deployments'
// pods are scheduled and captured, curl reaches productpage by name
// through the waypoint, the policy refuses DELETE and other callers, the
// route splits reviews between v1 and v2 only, `local status` shows each
// object Accepted and the two bad ones Rejected with their reason; and
// after Ctrl-C nothing is left: no network namespace, mount, bpffs, hosts
// file, process or directory.
func TestLocalUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("zmeshctl local up needs root (network namespaces, eBPF)")
	}
	// Linking is most of the time on a busy machine (minutes, not bounded
	// here); the mesh's own steps have their own bound below.
	began := time.Now()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "../../cmd/zmeshctl", "../../cmd/zmeshd", "../../cmd/ztunnel",
		"../../cmd/zmesh-cni-agent", "../../cmd/zmesh-cni", "../../cmd/waypoint")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// zmesh-local is this package's main: the test binary runs it when
	// called by that name (TestMain), which saves linking it again.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "zmesh-local")); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the mesh's binaries in %s", time.Since(began).Round(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began = time.Now()
	in := filepath.Join(t.TempDir(), "bookinfo")
	if err := os.CopyFS(in, os.DirFS("testdata/bookinfo")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, "zz-bad.yaml"), []byte(badYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	sessionPath := filepath.Join(t.TempDir(), "session.json")
	zmeshctl := filepath.Join(bin, "zmeshctl")
	linksBefore := netenv.RootLinks()

	var out testutil.SyncBuffer
	up := exec.Command(zmeshctl, "local", "up", "-f", in, "--bin", bin, "--session", sessionPath)
	up.Stdout, up.Stderr = &out, &out
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			up.Process.Signal(syscall.SIGINT)
			<-exited
		}
	})
	var s Session
	for {
		if b, err := os.ReadFile(sessionPath); err == nil && json.Unmarshal(b, &s) == nil {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("zmeshctl local up exited (%v) before the mesh was up:\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("the mesh was not up in time:\n%s", out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("zmeshctl local up: the mesh was up in %s:\n%s", time.Since(began).Round(100*time.Millisecond), out.String())

	// Every Deployment's pod runs, captured.
	pods := map[string]SessionPod{}
	for _, p := range s.Pods {
		if !p.Ambient {
			t.Errorf("pod %s is not ambient: namespace default is labelled", p.Name)
		}
		pods[p.Owner] = p
	}
	for _, d := range []string{"details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "productpage-v1", "curl"} {
		if _, ok := pods["Deployment/"+d]; !ok {
			t.Errorf("no pod of Deployment %s runs: %+v", d, s.Pods)
		}
	}
	if len(s.Waypoints) != 1 {
		t.Fatalf("waypoints %+v, want the one of Gateway default/waypoint", s.Waypoints)
	}

	// As the docs do it: kubectl exec deploy/curl -- curl ….
	exe := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, zmeshctl, append([]string{"local", "exec", "--session", sessionPath, "deploy/curl", "--", "curl", "-s", "-m", "10"}, args...)...)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	// The ztunnels learn of the waypoint and the waypoint of its routes
	// from zmeshd's pushes, which may land just after the session says up.
	var got string
	var echo podapp.Echo
	var perr error
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		got, err = exe("http://productpage:9080/productpage")
		echo, perr = podapp.ParseEcho([]byte(got))
		if err == nil && perr == nil && strings.HasPrefix(echo.Pod, "productpage-v1-") && len(echo.Headers["X-Request-Id"]) > 0 || time.Now().After(end) {
			break
		}
	}
	if err != nil || perr != nil || !strings.HasPrefix(echo.Pod, "productpage-v1-") || len(echo.Headers["X-Request-Id"]) == 0 {
		t.Fatalf("curl -> productpage for 30s: %v %v: %s (want productpage's echo, through the waypoint: x-request-id set)", err, perr, got)
	}
	if got, err := exe("-X", "DELETE", "http://productpage:9080/productpage"); err != nil || got != "RBAC: access denied" {
		t.Errorf("curl DELETE productpage: %v %q, want the L7 policy's 403 RBAC: access denied", err, got)
	}

	// Another identity is refused; the route splits reviews over v1 and
	// v2 only (with no route, v3 would get a third).
	vip := map[string]string{}
	for _, svc := range s.Services {
		vip[svc.Name] = fmt.Sprintf("%s:%d", svc.ClusterIP, svc.Ports[0])
	}
	details := inPod(pods["Deployment/details-v1"].NetNS)
	defer details.CloseIdleConnections()
	if code, body := get(t, details, "http://"+vip["productpage"]+"/productpage"); code != http.StatusForbidden {
		t.Errorf("details -> productpage: %d %s, want 403: the policy admits only curl", code, body)
	}
	curl := inPod(pods["Deployment/curl"].NetNS)
	defer curl.CloseIdleConnections()
	versions := map[string]int{}
	for range 100 {
		code, body := get(t, curl, "http://"+vip["reviews"]+"/")
		e, err := podapp.ParseEcho([]byte(body))
		if code != http.StatusOK || err != nil {
			t.Fatalf("curl -> reviews: %d %s", code, body)
		}
		versions[e.Version]++
	}
	if versions["v3"] != 0 || versions["v2"] < 1 || versions["v2"] > 30 || versions["v1"]+versions["v2"] != 100 {
		t.Errorf("100 requests to reviews: %v, want about 90 v1 / 10 v2 and no v3 (HTTPRoute reviews)", versions)
	}

	// An edit is applied as it is saved, as kubectl apply would: the
	// route sends everything to v3, and the pods keep running.
	route := filepath.Join(in, "reviews-route.yaml")
	b, err := os.ReadFile(route)
	if err != nil {
		t.Fatal(err)
	}
	allV3 := strings.Replace(strings.Replace(string(b), "name: reviews-v1", "name: reviews-v3", 1), "name: reviews-v2", "name: reviews-v3", 1)
	if err := os.WriteFile(route, []byte(allV3), 0o644); err != nil {
		t.Fatal(err)
	}
	edited := time.Now()
	inARow := 0
	for inARow < 10 {
		if time.Since(edited) > 30*time.Second {
			t.Fatalf("reviews still answers from other versions than v3 30 s after the route was edited:\n%s", out.String())
		}
		code, body := get(t, curl, "http://"+vip["reviews"]+"/")
		if e, err := podapp.ParseEcho([]byte(body)); code == http.StatusOK && err == nil && e.Version == "v3" {
			inARow++
		} else {
			inARow = 0
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("the edited route took effect %s after it was saved", time.Since(edited).Round(100*time.Millisecond))
	var after Session
	if b, err := os.ReadFile(sessionPath); err != nil || json.Unmarshal(b, &after) != nil || len(after.Pods) != len(s.Pods) {
		t.Errorf("session after the edit: %v, %d pods (want %d)", err, len(after.Pods), len(s.Pods))
	}
	for i, p := range after.Pods {
		if p.Name != s.Pods[i].Name || p.NetNS != s.Pods[i].NetNS {
			t.Errorf("pod %s (%s) became %s (%s) when only the route changed", s.Pods[i].Name, s.Pods[i].NetNS, p.Name, p.NetNS)
		}
	}

	// local status: what the API server's status would show.
	st, err := exec.CommandContext(ctx, zmeshctl, "local", "status", "--session", sessionPath, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("zmeshctl local status: %v\n%s", err, st)
	}
	var status struct {
		Objects []struct{ Kind, Namespace, Name, Status, Reason, Message string }
	}
	if err := json.Unmarshal(st, &status); err != nil {
		t.Fatalf("local status -o json: %v\n%s", err, st)
	}
	seen := map[string]bool{}
	for _, o := range status.Objects {
		key := o.Kind + " " + o.Namespace + "/" + o.Name
		seen[key] = true
		switch key {
		case "HTTPRoute default/ratings":
			if o.Status != "Rejected" || o.Reason != "BackendNotFound" || !strings.Contains(o.Message, "ratings-v9") {
				t.Errorf("%s: %+v, want Rejected BackendNotFound naming ratings-v9", key, o)
			}
		case "AuthorizationPolicy default/typo":
			if o.Status != "Rejected" || !strings.Contains(o.Message, `unknown field "actoin"`) {
				t.Errorf("%s: %+v, want Rejected naming the unknown field", key, o)
			}
		default:
			if o.Status != "Accepted" {
				t.Errorf("%s: %+v, want Accepted", key, o)
			}
		}
	}
	for _, want := range []string{"AuthorizationPolicy default/productpage-viewer", "HTTPRoute default/reviews", "Gateway default/waypoint", "ServiceAccount default/curl", "Deployment default/curl", "Namespace /default"} {
		if !seen[want] {
			t.Errorf("local status lacks %s", want)
		}
	}
	table, _ := exec.CommandContext(ctx, zmeshctl, "local", "status", "--session", sessionPath).CombinedOutput()
	t.Logf("zmeshctl local status:\n%s", table)

	// Ctrl-C: everything goes.
	began = time.Now()
	up.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("zmeshctl local up after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("zmeshctl local up still runs a minute after Ctrl-C:\n%s", out.String())
	}
	t.Logf("zmeshctl local up exited %s after Ctrl-C", time.Since(began).Round(100*time.Millisecond))
	if !strings.Contains(out.String(), "nothing else left") {
		t.Errorf("no clean cleanup line:\n%s", out.String())
	}
	for _, l := range leftBehind(s, bin, sessionPath, linksBefore) {
		t.Errorf("left behind: %s", l)
	}
}

// leftBehind lists what a finished session left: its network namespaces,
// root-namespace links, mounts or processes naming its directory, the
// directory, hosts files, the session file, and processes of its binaries.
func leftBehind(s Session, bin, sessionPath string, linksBefore []string) []string {
	var out []string
	prefix := fmt.Sprintf("zm%d-", s.Pid%100000)
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "network namespace "+e.Name())
		}
	}
	out = append(out, netenv.LeftBehind(s.Dir, linksBefore, false)...)
	for _, p := range s.Pods {
		if _, err := os.Stat(filepath.Join("/etc/netns", p.NetNS)); err == nil {
			out = append(out, "/etc/netns/"+p.NetNS)
		}
	}
	if _, err := os.Stat(sessionPath); err == nil {
		out = append(out, "session file "+sessionPath)
	}
	if syscall.Kill(s.Pid, 0) == nil {
		out = append(out, fmt.Sprintf("zmesh-local pid %d", s.Pid))
	}
	// The mesh's processes are bin's binaries; zmesh-local and the pods'
	// apps are this test binary, the apps marked by podapp.Env.
	self, _ := os.Executable()
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || e.Name() == fmt.Sprint(os.Getpid()) {
			continue
		}
		if strings.HasPrefix(target, bin+"/") {
			out = append(out, fmt.Sprintf("process %s: %s", e.Name(), target))
		}
		if env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); target == self && bytes.Contains(env, []byte(podapp.Env+"=")) {
			out = append(out, "pod app process "+e.Name())
		}
	}
	return out
}

// inPod is an HTTP client whose connections are opened in a pod's network
// namespace (so the mesh captures them).
func inPod(name string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread dies with the goroutine
		}
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 1}}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}
