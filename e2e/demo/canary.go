package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// The canary of mesh/50-canary.yaml.
var (
	canaryWaypoint = types.NamespacedName{Namespace: "demo", Name: "waypoint"}
	webVIP         = netip.MustParseAddrPort("10.96.0.11:80")
)

// canaryRequests is how many requests the canary step sends: at 90/10,
// v2 gets none with probability 0.9^100 (3e-5), and more than 30 (the
// bound checked) with a probability below 1e-8.
const canaryRequests = 100

// canary sends requests from alice to service web, which uses the
// waypoint: alice's ztunnel tunnels them to the waypoint, which routes each
// request by the VirtualService (90/10 over the DestinationRule's subsets)
// and forwards it over HBONE to a web pod. Then alice dials web-v1's pod IP
// directly, around the waypoint: web-v1's ztunnel refuses it.
func (m *mesh) canary(ctx context.Context, st story, alice, webV1 *pod, wp *noderunner.RunningPod) error {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return alice.rp.NS.Dial(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 1,
		},
	}
	defer client.CloseIdleConnections()
	web := webClient{c: client, url: "http://" + webVIP.String()}
	url := web.url + "/"
	get := func() (podapp.Echo, error) {
		r, err := web.get("/", nil)
		if err != nil {
			return podapp.Echo{}, err
		}
		if r.status != http.StatusOK {
			return podapp.Echo{}, fmt.Errorf("%d %s", r.status, r.body)
		}
		return r.echo, nil
	}
	// The waypoint may still be reconnecting to the zmeshd restarted
	// earlier; the first answer says the path is up.
	var lastErr error
	if err := waitFor(ctx, func() bool { _, lastErr = get(); return lastErr == nil }); err != nil {
		return fmt.Errorf("alice -> %s (service web, through the waypoint): %v", url, lastErr)
	}
	count := map[string]int{}
	start := time.Now()
	for range canaryRequests {
		e, err := get()
		if err != nil {
			return fmt.Errorf("alice -> %s (service web, through the waypoint): %w", url, err)
		}
		// alice sends no x-request-id: the waypoint's HTTP layer adds one,
		// so a request without it did not cross the waypoint. The pod sees
		// alice's address all the same (Forwarded on the waypoint's tunnel).
		if len(e.Headers["X-Request-Id"]) == 0 {
			return fmt.Errorf("web's pod %s got a request without x-request-id: it did not come through the waypoint", e.Pod)
		}
		if from, _, _ := strings.Cut(e.From, ":"); from != alice.addr.String() {
			return fmt.Errorf("web's pod %s saw the request from %s, want alice (%s)", e.Pod, e.From, alice.addr)
		}
		count[e.Version]++
	}
	took := time.Since(start)
	v1, v2 := count["v1"], count["v2"]
	if v1+v2 != canaryRequests {
		return fmt.Errorf("%d requests answered by versions %v: want only v1 and v2", canaryRequests, count)
	}
	if v2 < 1 || v2 > 30 {
		return fmt.Errorf("%d requests: v1 %d, v2 %d; want about 90/10 (v2 between 1 and 30)", canaryRequests, v1, v2)
	}
	st.say("alice", "-> %s (service web): %d requests: v1 %d, v2 %d (VirtualService web: 90/10) in %s", url, canaryRequests, v1, v2, took.Round(10*time.Millisecond))
	// The waypoint writes its access log in batches (a line waits at most
	// a fraction of a second), so the count may lag the last answer.
	var logged int
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := accessLogLines(m.node(waypointNode), wp, webVIP.Addr().String())
		if err != nil {
			return err
		}
		if logged = n; logged >= canaryRequests || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if logged < canaryRequests {
		return fmt.Errorf("the waypoint's access log has %d requests to service web, want at least %d", logged, canaryRequests)
	}
	st.say("waypoint", "access log: %d requests from %s to service web; each reached the pod with the waypoint's x-request-id, from alice's address", logged, alice.id())
	if err := m.walkthrough(ctx, st, web); err != nil {
		return err
	}

	direct := netip.AddrPortFrom(webV1.addr, podapp.HTTPPort)
	if _, err := call(ctx, alice, direct, "GET / HTTP/1.0\r\n"); err == nil {
		return fmt.Errorf("alice reached web-v1 at its pod IP %s around the waypoint", direct)
	} else if !errors.Is(err, errNoReply) && !isRefusal(err) {
		return fmt.Errorf("alice -> %s: %w (want a refusal by web-v1's ztunnel)", direct, err)
	}
	n := m.node(webV1.node)
	var reason string
	if err := waitFor(ctx, func() bool {
		for _, rec := range n.ztunnel.LogRecords("connection complete", "src.identity", alice.id(), "dst.addr", direct.String()) {
			if r, ok := rec["reason"].(string); ok {
				reason = r
				return true
			}
		}
		return false
	}); err != nil {
		return fmt.Errorf("%s's ztunnel logged no refusal of alice -> %s", n.name, direct)
	}
	st.say("alice", "-> %s (web-v1's pod IP, around the waypoint): refused by %s's ztunnel: %s", direct, n.name, reason)
	return nil
}

// isRefusal says whether a dial or read error is the connection being
// refused or reset (what a ztunnel refusing a tunnel looks like to the
// client's app).
func isRefusal(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset") || strings.Contains(s, "EOF") || strings.Contains(s, "broken pipe")
}

// accessLogLines counts the waypoint's access-log lines (JSON on its
// stdout, the pod's log file) whose upstream or authority names dst.
func accessLogLines(n *node, wp *noderunner.RunningPod, dst string) (int, error) {
	path := filepath.Join(n.dir, "pods", "pod-"+wp.Namespace+"-"+wp.Name+"-"+string(wp.UID)[:8]+".log")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("the waypoint's log: %w", err)
	}
	lines := 0
	for l := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(l, `"authority"`) && strings.Contains(l, dst) {
			lines++
		}
	}
	return lines, nil
}
