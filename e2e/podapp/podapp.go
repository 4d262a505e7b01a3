// Package podapp is the process the e2e node runner starts inside each pod's
// network namespace, in place of the pod's containers. It answers like the
// Gateway API conformance echo server (echo-basic), so scenario YAML can be
// taken from Istio's and Gateway API's docs with only image names changed:
//
//   - HTTP/1.1, h2c (prior knowledge or Upgrade) and gRPC: a JSON echo of
//     the request (Echo), /status/NNN, ?delay=, response headers from
//     X-Echo-Set-Header, a WebSocket echo on /ws, /health, and the
//     conformance GrpcEcho service (with server reflection);
//   - TCP: an echo server that greets first with "pod=<ns/name>
//     from=<ip:port>" (Greeting), then sends back what it reads.
//
// Every reply names the pod, its namespace and its "version" label, so a
// test can count which subset answered.
//
// A pod whose container runs Istio's test app (echo-advanced, the echo pods
// of the Gateway API mesh conformance tests) is played in that app's format
// instead: key=value lines, the ports its args name, its gRPC echo service
// (istio.go); and the binary answers to the name "client" as that app's
// client (client.go).
//
// It serves every TCP containerPort of its pod, and always 8080 and 9000 (the
// ports the L4 suite and the node runner's readiness check use). A port's
// role comes from its name when the name follows Istio's protocol prefixes
// (tcp, http, http2, h2c, grpc, each alone or followed by "-"): tcp greets
// first, the others are HTTP. An unnamed or otherwise named port is HTTP,
// except 9000, which greets. An HTTP port waits for the client to speak and
// sniffs its first bytes: an HTTP/1.x request line or the HTTP/2 preface is
// served as HTTP (gRPC being HTTP/2 with content-type application/grpc),
// anything else gets the TCP echo (as does a client silent for 30 s).
//
// A real process (not a goroutine of the test) because the CNI agent finds
// a running pod's namespace the way it does on a node, by walking /proc for
// a process in it. A test binary becomes the app when started with Env set:
// its TestMain calls Main first.
package podapp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Env names the pod ("namespace/name") the process plays; set only in the
// app's environment.
const Env = "ZMESH_PODAPP"

// PodEnv, when set beside Env, holds the pod object as JSON (the node runner
// passes its metadata and containers): the app reads the labels, the
// containerPorts and the containers' literal env from it.
const PodEnv = Env + "_POD"

// Ports the app always listens on, on every address of its namespace.
const (
	HTTPPort = 8080
	EchoPort = 9000
)

// IsApp reports whether this process was started as a pod's app.
func IsApp() bool { return os.Getenv(Env) != "" }

// Main serves until SIGTERM and exits the process.
func Main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pod, err := ParsePod(os.Getenv(Env), os.Getenv(PodEnv))
	if err == nil {
		err = nameHost(pod.Name)
	}
	if err == nil {
		err = serve(ctx, pod)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podapp:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Pod is what the app knows of the pod it plays.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// Service is the container env SERVICE_NAME when set to a literal
	// value (as for echo-basic), else the pod's "app" label.
	Service string
	// Ports are the pod's TCP containerPorts (for Istio's test app, the
	// ports its args name).
	Ports []Port
	// IstioFormat: the pod runs Istio's test app (echo-advanced), whose
	// answers are key=value lines (see istio.go).
	IstioFormat bool
}

// ID is "namespace/name".
func (p Pod) ID() string { return p.Namespace + "/" + p.Name }

// Version is the pod's "version" label.
func (p Pod) Version() string { return p.Labels["version"] }

// Port is one port the app serves.
type Port struct {
	Name string
	Port uint16
}

// Greets reports whether the port is a TCP echo that greets first rather
// than an HTTP port (see the package doc).
func (p Port) Greets() bool {
	switch protocolOf(p.Name) {
	case "tcp":
		return true
	case "":
		return p.Port == EchoPort
	}
	return false
}

// protocolOf is the Istio protocol prefix of a port name, or "".
func protocolOf(name string) string {
	proto, _, _ := strings.Cut(name, "-")
	switch proto {
	case "tcp", "http", "http2", "h2c", "grpc":
		return proto
	}
	return ""
}

// Serves is every port the app listens on: the declared ones, then 8080
// and 9000 unless declared.
func (p Pod) Serves() []Port {
	out := slices.Clone(p.Ports)
	for _, d := range []uint16{HTTPPort, EchoPort} {
		if !slices.ContainsFunc(out, func(q Port) bool { return q.Port == d }) {
			out = append(out, Port{Port: d})
		}
	}
	return out
}

// ParsePod reads the pod from Env's value ("namespace/name") and PodEnv's
// (the pod as JSON, may be empty).
func ParsePod(id, podJSON string) (Pod, error) {
	ns, name, ok := strings.Cut(id, "/")
	if !ok || ns == "" || name == "" {
		return Pod{}, fmt.Errorf("%s=%q: want namespace/name", Env, id)
	}
	pod := Pod{Namespace: ns, Name: name}
	if podJSON == "" {
		return pod, nil
	}
	// The fields of a Kubernetes Pod the app reads; decoding them here
	// keeps the app free of the Kubernetes API packages.
	var obj struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Containers []struct {
				Image string   `json:"image"`
				Args  []string `json:"args"`
				Ports []struct {
					Name          string `json:"name"`
					ContainerPort int32  `json:"containerPort"`
					Protocol      string `json:"protocol"`
				} `json:"ports"`
				Env []struct {
					Name  string `json:"name"`
					Value string `json:"value"`
				} `json:"env"`
			} `json:"containers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(podJSON), &obj); err != nil {
		return Pod{}, fmt.Errorf("%s: %w", PodEnv, err)
	}
	pod.Labels = obj.Metadata.Labels
	pod.Service = pod.Labels["app"]
	for ci, c := range obj.Spec.Containers {
		for pi, p := range c.Ports {
			if p.Protocol != "" && p.Protocol != "TCP" {
				continue
			}
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				return Pod{}, fmt.Errorf("%s: spec.containers[%d].ports[%d].containerPort %d: want 1-65535", PodEnv, ci, pi, p.ContainerPort)
			}
			port := Port{Name: p.Name, Port: uint16(p.ContainerPort)}
			if !slices.ContainsFunc(pod.Ports, func(q Port) bool { return q.Port == port.Port }) {
				pod.Ports = append(pod.Ports, port)
			}
		}
		for _, e := range c.Env {
			if e.Name == "SERVICE_NAME" && e.Value != "" {
				pod.Service = e.Value
			}
		}
		if isIstioEchoImage(c.Image) {
			ports, err := istioEchoPorts(c.Args)
			if err != nil {
				return Pod{}, fmt.Errorf("%s: spec.containers[%d].args: %w", PodEnv, ci, err)
			}
			pod.IstioFormat = true
			for _, port := range ports {
				if !slices.ContainsFunc(pod.Ports, func(q Port) bool { return q.Port == port.Port }) {
					pod.Ports = append(pod.Ports, port)
				}
			}
		}
	}
	return pod, nil
}

// Greeting is the line the TCP echo answers with first: "pod=<ns/name> from=<ip:port>".
func Greeting(pod string, remote net.Addr) string {
	return fmt.Sprintf("pod=%s from=%s", pod, remote)
}

// ParseGreeting splits a greeting into the pod and the caller's address.
func ParseGreeting(s string) (pod, from string, ok bool) {
	s = strings.TrimSpace(s)
	p, rest, ok1 := strings.Cut(s, " ")
	pod, ok2 := strings.CutPrefix(p, "pod=")
	from, ok3 := strings.CutPrefix(rest, "from=")
	return pod, from, ok1 && ok2 && ok3
}

func serve(ctx context.Context, pod Pod) error {
	app := New(pod)
	var lc net.ListenConfig
	ports := pod.Serves()
	lns := make([]net.Listener, 0, len(ports))
	for _, p := range ports {
		ln, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", p.Port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ports))
	for i, ln := range lns {
		wg.Go(func() { errs <- app.Serve(ctx, ln, ports[i]) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// nameHost sets the hostname to the pod's name, as a container runtime
// does, when the runner gave the app a UTS namespace of its own: never the
// machine's (the namespace is compared with the runner's, its parent).
func nameHost(name string) error {
	own, err := os.Readlink("/proc/self/ns/uts")
	if err != nil {
		return nil
	}
	if parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/uts", os.Getppid())); err != nil || parent == own {
		return nil
	}
	if err := syscall.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("hostname %q: %w", name, err)
	}
	return nil
}
