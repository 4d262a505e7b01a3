package podapp

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	confecho "sigs.k8s.io/gateway-api/conformance/utils/echo"
)

// The args of the mesh conformance suite's echo Deployments.
var meshEchoArgs = []string{"--tcp=9090", "--port=8080", "--grpc=7070", "--port=8443", "--tls=8443", "--crt=/cert.crt", "--key=/cert.key"}

func TestIstioEchoPorts(t *testing.T) {
	got, err := istioEchoPorts(meshEchoArgs)
	if err != nil {
		t.Fatal(err)
	}
	want := []Port{{"tcp", 9090}, {"http", 8080}, {"grpc", 7070}}
	if !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v (8443 serves TLS with certificates the runner lacks)", got, want)
	}
	if _, err := istioEchoPorts([]string{"--port=http"}); err == nil || !strings.Contains(err.Error(), "--port") {
		t.Errorf("a bad port: %v, want an error naming --port", err)
	}
	pod := map[string]any{
		"metadata": map[string]any{"labels": map[string]string{"app": "echo", "version": "v1"}},
		"spec": map[string]any{"containers": []any{map[string]any{
			"image": "registry.k8s.io/gateway-api/echo-advanced:v1.5.1", "args": meshEchoArgs}}},
	}
	b, _ := json.Marshal(pod)
	p, err := ParsePod("gateway-conformance-mesh/echo-v1-abc", string(b))
	if err != nil {
		t.Fatal(err)
	}
	if !p.IstioFormat || !slices.Equal(p.Ports, want) {
		t.Errorf("pod of echo-advanced: Istio format %v, ports %v; want true, %v", p.IstioFormat, p.Ports, want)
	}
}

// The client's report, parsed by the conformance suite's own parser: one
// response per request, with the status, the server's pod name and what
// the server saw of the request.
func TestClientAgainstIstioEcho(t *testing.T) {
	pod := testPod
	pod.IstioFormat = true
	httpAddr := startApp(t, pod, Port{Name: "http", Port: 8080})
	grpcAddr := startApp(t, pod, Port{Name: "grpc", Port: 7070})

	run := func(args ...string) []confecho.Response {
		t.Helper()
		var out, errb bytes.Buffer
		if code := RunClient(context.Background(), args, &out, &errb); code != 0 {
			t.Fatalf("client %v: exit %d: %s", args, code, errb.String())
		}
		var rs []confecho.Response
		for sec := range strings.SplitSeq(out.String(), "\n\n") {
			if strings.TrimSpace(sec) != "" {
				rs = append(rs, confecho.ParseResponse(sec))
			}
		}
		return rs
	}

	rs := run("http://"+httpAddr+"/some/path?q=1", "--method=POST", "-H", "X-Foo:bar", "-H", "Host:echo", "--count=3")
	if len(rs) != 3 {
		t.Fatalf("%d responses, want 3", len(rs))
	}
	for _, r := range rs {
		if r.Code != "200" || r.Hostname != pod.Name || r.Method != "POST" || r.Host != "echo" || r.URL != "/some/path?q=1" || r.Version != "v2" {
			t.Errorf("response %+v", r)
		}
		if got := r.RequestHeaders.Get("X-Foo"); got != "bar" {
			t.Errorf("the server saw X-Foo %q, want bar", got)
		}
	}
	if rs[0].ResponseHeaders.Get("Content-Type") != "text/plain" {
		t.Errorf("response headers %v", rs[0].ResponseHeaders)
	}

	rs = run("grpc://"+grpcAddr, "--count=2")
	if len(rs) != 2 || rs[0].Code != "200" || rs[0].Hostname != pod.Name || rs[1].Hostname != pod.Name {
		t.Fatalf("gRPC responses %+v", rs)
	}

	var out, errb bytes.Buffer
	if code := RunClient(context.Background(), []string{"http://" + httpAddr, "--count=0"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "--count") {
		t.Errorf("--count=0: exit %d, %q", code, errb.String())
	}
	if code := RunClient(context.Background(), []string{"http://127.0.0.1:1/"}, &out, &errb); code != 1 {
		t.Errorf("an unreachable server: exit %d, want 1", code)
	}
}
