package l7

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/e2e/cluster"
	grpcecho "sigs.k8s.io/gateway-api/conformance/echo-basic/grpcechoserver"
)

// TestGRPCRoute sends gRPC calls through the waypoint under a GRPCRoute
// attached to the Service (l7-grpc.yaml): the method EchoTwo goes to v2,
// every other call to v1; statuses (trailers) come back as the server sent
// them, and the connection stays HTTP/2 from the client to the app.
func TestGRPCRoute(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-grpc.yaml", "grpc", 3)
	addr := serviceAddr(t, "grpc", "grpc-echo", 7070).String()
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return pods["client"].NS.Dial(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := grpcecho.NewGrpcEchoClient(conn)
	call := func(method string) (*grpcecho.EchoResponse, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		switch method {
		case "Echo":
			return echo.Echo(ctx, &grpcecho.EchoRequest{})
		case "EchoTwo":
			return echo.EchoTwo(ctx, &grpcecho.EchoRequest{})
		}
		return echo.EchoThree(ctx, &grpcecho.EchoRequest{})
	}

	// Both versions serve the Service; the route is in force once EchoTwo
	// reaches v2 alone.
	until(t, 30*time.Second, "EchoTwo answered by v2 only", func() error {
		for range 20 {
			r, err := call("EchoTwo")
			if err != nil {
				return err
			}
			if v := versionOf(r.GetAssertions().GetContext().GetPod()); v != "v2" {
				return fmt.Errorf("EchoTwo answered by %q", v)
			}
		}
		return nil
	})

	t.Run("method match", func(t *testing.T) {
		for _, tc := range []struct{ method, full, want string }{
			{"Echo", grpcecho.GrpcEcho_Echo_FullMethodName, "v1"},
			{"EchoTwo", grpcecho.GrpcEcho_EchoTwo_FullMethodName, "v2"},
		} {
			got := map[string]int{}
			for range 50 {
				r, err := call(tc.method)
				if err != nil {
					t.Fatalf("%s: %v", tc.method, err)
				}
				a := r.GetAssertions()
				if a.GetFullyQualifiedMethod() != tc.full || a.GetAuthority() != addr {
					t.Fatalf("%s: the server saw method %q authority %q, want %q %q", tc.method, a.GetFullyQualifiedMethod(), a.GetAuthority(), tc.full, addr)
				}
				if !hasMetadata(a, "x-request-id") {
					t.Fatalf("%s: no x-request-id from the waypoint in %v", tc.method, a.GetHeaders())
				}
				got[versionOf(a.GetContext().GetPod())]++
			}
			t.Logf("50 × %s: %v", tc.method, got)
			if got[tc.want] != 50 {
				t.Errorf("50 × %s answered by %v, want all %s", tc.method, got, tc.want)
			}
		}
	})

	t.Run("status from the server", func(t *testing.T) {
		// EchoThree is unimplemented at the server: its UNIMPLEMENTED
		// travels in the trailers, which the waypoint must pass on.
		_, err := call("EchoThree")
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("EchoThree: %v, want code Unimplemented", err)
		}
	})

	t.Run("telemetry", func(t *testing.T) {
		// The waypoint labels gRPC calls with their grpc-status: 0 for
		// Echo and EchoTwo, 12 (UNIMPLEMENTED) for EchoThree, each with
		// HTTP status 200.
		wp := waypointPod(t, pods)
		for _, tc := range []struct{ service, status string }{
			{"grpc-echo-v1.grpc.svc.cluster.local", "0"},
			{"grpc-echo-v2.grpc.svc.cluster.local", "0"},
			{"grpc-echo-v1.grpc.svc.cluster.local", "12"},
		} {
			want := map[string]string{
				"reporter": "waypoint", "request_protocol": "grpc", "response_code": "200",
				"destination_service": tc.service, "grpc_response_status": tc.status,
			}
			until(t, 10*time.Second, fmt.Sprintf("istio_requests_total of %s with grpc-status %s", tc.service, tc.status), func() error {
				m, err := waypointMetrics(t.Context(), wp)
				if err != nil {
					return err
				}
				if cluster.MetricLine(m, "istio_requests_total", want) == "" {
					return fmt.Errorf("no sample of %v in:\n%s", want, grepLines(m, "istio_requests_total{"))
				}
				return nil
			})
		}
	})

	t.Run("HTTP/2 end to end", func(t *testing.T) {
		// A plain HTTP/2 (prior knowledge) request on the same port: the
		// app says which protocol reached it.
		c := h2cClient(pods["client"])
		code, e, err := get(c, "http://"+addr+"/", nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("h2c GET /: %d %v", code, err)
		}
		if e.Proto != "HTTP/2.0" || e.Version != "v1" || len(e.Headers["X-Request-Id"]) != 1 {
			t.Errorf("h2c GET /: the app saw %s at %q, headers %v; want HTTP/2.0 at v1 with the waypoint's x-request-id", e.Proto, e.Version, e.Headers)
		}
	})
}

// hasMetadata reports whether the server saw the metadata key.
func hasMetadata(a *grpcecho.Assertions, key string) bool {
	for _, h := range a.GetHeaders() {
		if h.GetKey() == key && h.GetValue() != "" {
			return true
		}
	}
	return false
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge) from the pod.
func h2cClient(p *cluster.Pod) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return p.NS.Dial(ctx, network, addr)
			},
		},
	}
}

// versionOf is the version in a pod's name (grpc-echo-v1, grpc-echo-v2).
func versionOf(pod string) string {
	return pod[strings.LastIndex(pod, "-")+1:]
}
