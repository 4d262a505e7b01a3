package podapp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/zmesh/zmesh/e2e/podapp/istioecho"
)

// Istio's test app (the image the Gateway API mesh conformance tests run
// as their echo pods, echo-advanced) answers in lines of key=value instead
// of JSON, and its client parses them. A pod whose container runs that
// image gets the app in that format (IstioFormat): its ports come from the
// container's args (--port, --grpc, --tcp), HTTP answers are the lines
// below, and the gRPC ports serve proto.EchoTestService with the same lines.

// isIstioEchoImage reports whether an image is Istio's test app.
func isIstioEchoImage(image string) bool {
	name, _, _ := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
	return name == "echo-advanced" || name == "app" && strings.Contains(image, "istio")
}

// istioEchoPorts reads the ports of Istio's test app from its args:
// --port=N (HTTP, repeatable), --grpc=N, --tcp=N. A port also named by
// --tls serves TLS there, with certificates the runner does not provide:
// it is left out. Other flags are accepted and ignored.
func istioEchoPorts(args []string) ([]Port, error) {
	var ports []Port
	tls := map[uint16]bool{}
	type flag struct{ name, value string }
	var flags []flag
	for i := 0; i < len(args); i++ {
		a, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			continue
		}
		name, value, ok := strings.Cut(a, "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			value = args[i+1]
			i++
		}
		flags = append(flags, flag{name, value})
	}
	for _, f := range flags {
		if f.name == "tls" {
			n, err := strconv.ParseUint(f.value, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("--tls=%q: want a port", f.value)
			}
			tls[uint16(n)] = true
		}
	}
	for _, f := range flags {
		role := map[string]string{"port": "http", "grpc": "grpc", "tcp": "tcp"}[f.name]
		if role == "" {
			continue
		}
		n, err := strconv.ParseUint(f.value, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--%s=%q: want a port", f.name, f.value)
		}
		p := Port{Name: role, Port: uint16(n)}
		if tls[p.Port] || slices.ContainsFunc(ports, func(q Port) bool { return q.Port == p.Port }) {
			continue
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// istioEchoLines is what Istio's test app answers a request with: one
// key=value line per field, a RequestHeader line per header value.
func (a *App) istioEchoLines(host, url, method, proto, remote string, port int, header http.Header) string {
	var b strings.Builder
	line := func(k, v string) { fmt.Fprintf(&b, "%s=%s\n", k, v) }
	line("ServiceVersion", a.pod.Version())
	line("ServicePort", strconv.Itoa(port))
	line("Host", host)
	line("URL", url)
	line("Cluster", "")
	line("IstioVersion", "")
	line("Method", method)
	line("Proto", proto)
	if ip, _, err := net.SplitHostPort(remote); err == nil {
		line("IP", ip)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range header {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		for _, v := range header[k] {
			line("RequestHeader", k+":"+v)
		}
	}
	line("Hostname", a.pod.Name)
	return b.String()
}

// serveIstioHTTP answers an HTTP request as Istio's test app does.
func (a *App) serveIstioHTTP(w http.ResponseWriter, r *http.Request) {
	port := 0
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if _, p, err := net.SplitHostPort(addr.String()); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(a.istioEchoLines(r.Host, r.RequestURI, r.Method, r.Proto, r.RemoteAddr, port, r.Header)))
}

// istioEcho is proto.EchoTestService: Echo answers with the same lines as
// the HTTP echo, the call's metadata as its headers.
type istioEcho struct {
	istioecho.UnimplementedEchoTestServiceServer
	a *App
}

func (s *istioEcho) Echo(ctx context.Context, _ *istioecho.EchoRequest) (*istioecho.EchoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	header := http.Header{}
	host := ""
	for k, vs := range md {
		if k == ":authority" {
			host = strings.Join(vs, ",")
			continue
		}
		for _, v := range vs {
			header.Add(k, v)
		}
	}
	remote, port := "", 0
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr.String()
		if p.LocalAddr != nil {
			if _, ps, err := net.SplitHostPort(p.LocalAddr.String()); err == nil {
				port, _ = strconv.Atoi(ps)
			}
		}
	}
	method, _ := grpc.Method(ctx)
	return &istioecho.EchoResponse{Message: s.a.istioEchoLines(host, method, "POST", "GRPC", remote, port, header)}, nil
}

// metadataAppend adds a request header to an outgoing gRPC call.
func metadataAppend(ctx context.Context, k, v string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, strings.ToLower(k), v)
}
