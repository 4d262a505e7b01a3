package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// webRoutes is the file of mesh/ holding VirtualService web, which the
// walk-through rewrites.
const webRoutes = "55-web-routes.yaml"

// The walk-through's VirtualServices, as Istio's request-routing, request
// timeouts and fault-injection tasks write them for service web.
const (
	headerRoutingYAML = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: demo
spec:
  hosts: [web]
  http:
    - match:
        - headers:
            end-user:
              exact: jason
      route:
        - destination: {host: web, subset: v2}
    - route:
        - destination: {host: web, subset: v1}
`
	timeoutYAML = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: demo
spec:
  hosts: [web]
  http:
    - route:
        - destination: {host: web, subset: v1}
      timeout: 2s
`
	abortYAML = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: demo
spec:
  hosts: [web]
  http:
    - fault:
        abort:
          percentage: {value: 50}
          httpStatus: 500
      route:
        - destination: {host: web, subset: v1}
`
)

// abortRequests is how many requests the abort step counts: at 50 % the
// aborted ones fall outside [25, 75] with a probability below 1e-6.
const abortRequests = 100

// webReply is what alice got from service web.
type webReply struct {
	status int
	body   string
	echo   podapp.Echo // when status is 200
	took   time.Duration
}

// webClient sends alice's HTTP requests to service web.
type webClient struct {
	c   *http.Client
	url string
}

func (w webClient) get(path string, header http.Header) (webReply, error) {
	req, err := http.NewRequest(http.MethodGet, w.url+path, nil)
	if err != nil {
		return webReply{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := w.c.Do(req)
	if err != nil {
		return webReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return webReply{}, err
	}
	r := webReply{status: resp.StatusCode, body: strings.TrimSpace(string(b)), took: time.Since(start)}
	if r.status == http.StatusOK {
		if r.echo, err = podapp.ParseEcho(b); err != nil {
			return webReply{}, err
		}
	}
	return r, nil
}

// version sends one request and returns the version of the pod that
// answered it, or an error naming what came back instead.
func (w webClient) version(header http.Header) (string, error) {
	r, err := w.get("/", header)
	if err != nil {
		return "", err
	}
	if r.status != http.StatusOK {
		return "", fmt.Errorf("%d %q", r.status, r.body)
	}
	return r.echo.Version, nil
}

// walkthrough rewrites VirtualService web step by step, as Istio's traffic
// management tasks do, and checks each step from alice through the
// waypoint: header routing (end-user jason to v2, everyone else to v1), a
// 2 s request timeout against a 3 s response, and an abort of half the
// requests. It puts the 90/10 split back at the end.
func (m *mesh) walkthrough(ctx context.Context, st story, web webClient) error {
	file := filepath.Join(m.meshDir, webRoutes)
	shipped, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	write := func(yaml string) error { return os.WriteFile(file, []byte(yaml), 0o644) }

	// Header routing.
	if err := write(headerRoutingYAML); err != nil {
		return err
	}
	jason := http.Header{"End-User": {"jason"}}
	// allAnswer checks that n requests in a row with header h are
	// answered by version want.
	allAnswer := func(n int, h http.Header, want string) error {
		for range n {
			v, err := web.version(h)
			if err == nil && v != want {
				err = fmt.Errorf("answered by %s", v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	var lastErr error
	if err := waitFor(ctx, func() bool {
		if err := allAnswer(10, nil, "v1"); err != nil {
			lastErr = fmt.Errorf("without end-user: %w", err)
			return false
		}
		// Five of jason's in a row on v2: under the 90/10 split that
		// comes before, 1 in 100 000.
		if err := allAnswer(5, jason, "v2"); err != nil {
			lastErr = fmt.Errorf("as jason: %v", err)
			return false
		}
		return true
	}); err != nil {
		return fmt.Errorf("header routing never took effect: %v", lastErr)
	}
	const each = 20
	for range each {
		if v, err := web.version(jason); err != nil || v != "v2" {
			return fmt.Errorf("end-user jason: answered by %q, %v; want v2 every time", v, err)
		}
		if v, err := web.version(nil); err != nil || v != "v1" {
			return fmt.Errorf("no end-user: answered by %q, %v; want v1 every time", v, err)
		}
	}
	st.say("edit", "%s: end-user jason -> v2, the rest -> v1: %d requests as jason all v2, %d others all v1", webRoutes, each, each)

	// A request timeout: 2 s against a pod answering after 3 s.
	if err := write(timeoutYAML); err != nil {
		return err
	}
	var slow webReply
	if err := waitFor(ctx, func() bool {
		slow, lastErr = web.get("/?delay=3s", nil)
		return lastErr == nil && slow.status == http.StatusGatewayTimeout
	}); err != nil {
		return fmt.Errorf("the 2 s timeout never took effect: last reply %d %q, %v", slow.status, slow.body, lastErr)
	}
	if slow.body != "upstream request timeout" {
		return fmt.Errorf("timed out request: body %q, want %q", slow.body, "upstream request timeout")
	}
	fast, err := web.get("/?delay=100ms", nil)
	if err != nil || fast.status != http.StatusOK {
		return fmt.Errorf("a 100 ms request under the 2 s timeout: %d %q, %v", fast.status, fast.body, err)
	}
	st.say("edit", "%s: timeout 2s: a 3 s request got %d %q after %s; a 100 ms one got 200", webRoutes, slow.status, slow.body, slow.took.Round(10*time.Millisecond))

	// An abort of half the requests.
	if err := write(abortYAML); err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool {
		r, err := web.get("/", nil)
		return err == nil && r.status == http.StatusInternalServerError && r.body == "fault filter abort"
	}); err != nil {
		return fmt.Errorf("the 50 %% abort never took effect")
	}
	aborted := 0
	for range abortRequests {
		r, err := web.get("/", nil)
		switch {
		case err != nil:
			return fmt.Errorf("abort step: %w", err)
		case r.status == http.StatusInternalServerError && r.body == "fault filter abort":
			aborted++
		case r.status != http.StatusOK:
			return fmt.Errorf("abort step: %d %q, want 200 or 500 %q", r.status, r.body, "fault filter abort")
		}
	}
	if aborted < 25 || aborted > 75 {
		return fmt.Errorf("abort 50%%: %d of %d requests aborted, want about half", aborted, abortRequests)
	}
	st.say("edit", "%s: abort 50%% with 500: %d of %d requests got 500 %q, the rest 200", webRoutes, aborted, abortRequests, "fault filter abort")

	// Back to the shipped split: 30 answers in a row say the abort is gone.
	if err := os.WriteFile(file, shipped, 0o644); err != nil {
		return err
	}
	ok := 0
	if err := waitFor(ctx, func() bool {
		if _, err := web.version(nil); err != nil {
			ok = 0
		} else {
			ok++
		}
		return ok == 30
	}); err != nil {
		return fmt.Errorf("the shipped split never came back")
	}
	st.say("edit", "%s put back: 90/10 again", webRoutes)
	return nil
}
