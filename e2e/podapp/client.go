package podapp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/e2e/podapp/istioecho"
)

// The client of Istio's test app, which the Gateway API mesh conformance
// tests run inside an echo pod (`client <url> [--method=M] [-H name:value]...
// [--count=N]`) and whose output they parse: per request n, lines
// "[n] Url=…", "[n] StatusCode=…", "[n] ResponseHeader=name:value" and
// the answer's lines as "[n body] key=value"; requests separated by a blank
// line. http:// URLs are sent as HTTP/1.1 without following redirects;
// grpc:// URLs call proto.EchoTestService/Echo (status OK is reported as
// 200, as Istio's client does).

// ClientName is the name the app's binary answers to as the client.
const ClientName = "client"

// IsClient reports whether this process was started as the client.
func IsClient() bool { return filepath.Base(os.Args[0]) == ClientName }

// ClientMain runs the client with the process's arguments and exits.
func ClientMain() {
	os.Exit(RunClient(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// maxClientCount bounds --count: one exec holds the requests' output.
const maxClientCount = 10000

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

// RunClient runs the client with args, writing its report to stdout; it
// returns the exit code.
func RunClient(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(ClientName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	method := fs.String("method", http.MethodGet, "HTTP method")
	count := fs.Int("count", 1, "number of requests")
	timeout := fs.Duration("timeout", 5*time.Second, "per-request timeout")
	var headers headerFlags
	fs.Var(&headers, "H", "request header name:value (repeatable)")
	fs.Var(&headers, "header", "request header name:value (repeatable)")
	// The URL comes first, flags after it.
	var target string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if target == "" && fs.NArg() > 0 {
		target = fs.Arg(0)
	}
	if target == "" {
		fmt.Fprintln(stderr, "client: no URL")
		return 2
	}
	if *count < 1 || *count > maxClientCount {
		fmt.Fprintf(stderr, "client: --count=%d: want 1 to %d\n", *count, maxClientCount)
		return 2
	}
	u, err := url.Parse(target)
	if err != nil {
		fmt.Fprintf(stderr, "client: %v\n", err)
		return 2
	}
	hdr := http.Header{}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || k == "" {
			fmt.Fprintf(stderr, "client: -H %q: want name:value\n", h)
			return 2
		}
		hdr.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	var do func(ctx context.Context) (code string, respHeader http.Header, body string, err error)
	switch u.Scheme {
	case "http":
		do = httpRequester(u, *method, hdr)
	case "grpc":
		d, closeConn, err := grpcRequester(u, hdr)
		if err != nil {
			fmt.Fprintf(stderr, "client: %v\n", err)
			return 1
		}
		defer closeConn()
		do = d
	default:
		fmt.Fprintf(stderr, "client: scheme %q: want http or grpc\n", u.Scheme)
		return 2
	}
	for i := range *count {
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		code, rh, body, err := do(rctx)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "client: request %d to %s: %v\n", i, target, err)
			return 1
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "[%d] Url=%s\n", i, target)
		fmt.Fprintf(stdout, "[%d] StatusCode=%s\n", i, code)
		for _, k := range slices.Sorted(mapKeys(rh)) {
			for _, v := range rh[k] {
				fmt.Fprintf(stdout, "[%d] ResponseHeader=%s:%s\n", i, k, v)
			}
		}
		for l := range strings.SplitSeq(strings.TrimRight(body, "\n"), "\n") {
			if l != "" {
				fmt.Fprintf(stdout, "[%d body] %s\n", i, l)
			}
		}
	}
	return 0
}

func mapKeys(h http.Header) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range h {
			if !yield(k) {
				return
			}
		}
	}
}

// httpRequester sends HTTP/1.1 requests over one keep-alive client,
// reporting redirects rather than following them.
func httpRequester(u *url.URL, method string, hdr http.Header) func(context.Context) (string, http.Header, string, error) {
	c := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{DialContext: (&net.Dialer{}).DialContext, MaxIdleConnsPerHost: 1},
	}
	return func(ctx context.Context) (string, http.Header, string, error) {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
		if err != nil {
			return "", nil, "", err
		}
		for k, vs := range hdr {
			if strings.EqualFold(k, "Host") {
				req.Host = vs[0]
				continue
			}
			req.Header[k] = vs
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return "", nil, "", err
		}
		return fmt.Sprint(resp.StatusCode), resp.Header, string(b), nil
	}
}

// grpcRequester calls proto.EchoTestService/Echo at u's host.
func grpcRequester(u *url.URL, hdr http.Header) (func(context.Context) (string, http.Header, string, error), func(), error) {
	conn, err := grpc.NewClient("dns:///"+u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	echo := istioecho.NewEchoTestServiceClient(conn)
	return func(ctx context.Context) (string, http.Header, string, error) {
		for k, vs := range hdr {
			for _, v := range vs {
				ctx = metadataAppend(ctx, k, v)
			}
		}
		resp, err := echo.Echo(ctx, &istioecho.EchoRequest{})
		if err != nil {
			st, ok := status.FromError(err)
			if !ok || errors.Is(err, context.DeadlineExceeded) {
				return "", nil, "", err
			}
			return fmt.Sprint(int(st.Code())), nil, "", nil
		}
		return "200", nil, resp.GetMessage(), nil
	}, func() { conn.Close() }, nil
}
