package noderunner

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/internal/testutil"
)

// Waypoints take addresses from the top of a range down, skipping those
// the directory's pods or Services and the running waypoints hold, never
// the broadcast address.
func TestWaypointAddresses(t *testing.T) {
	pod := func(ip string) *corev1.Pod { return &corev1.Pod{Status: corev1.PodStatus{PodIP: ip}} }
	svc := func(ip string) *corev1.Service { return &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: ip}} }
	s := &model.Snapshot{
		Pods:     []*corev1.Pod{pod("10.50.2.10"), pod("10.50.2.254")},
		Services: []*corev1.Service{svc("10.96.0.254"), svc("None")},
	}
	f := &Files{}
	for _, tc := range []struct {
		prefix string
		pods   bool
		want   string
	}{
		{"10.50.2.0/24", true, "10.50.2.253"},
		{"10.96.0.0/24", false, "10.96.0.253"},
		{"10.96.0.0/16", false, "10.96.255.254"},
		{"10.50.3.0/24", true, "10.50.3.254"},
	} {
		got, err := f.freeAddr(netip.MustParsePrefix(tc.prefix), s, tc.pods)
		if err != nil || got.String() != tc.want {
			t.Errorf("freeAddr(%s) = %v, %v; want %s", tc.prefix, got, err, tc.want)
		}
	}
	f.waypoints = map[types.NamespacedName]*runningWaypoint{{Namespace: "a", Name: "w"}: {
		pod: &RunningPod{IP: netip.MustParseAddr("10.50.2.253")}, svc: netip.MustParseAddr("10.96.0.253")}}
	if got, _ := f.freeAddr(netip.MustParsePrefix("10.50.2.0/24"), s, true); got.String() != "10.50.2.252" {
		t.Errorf("with a waypoint at .253: %v, want 10.50.2.252", got)
	}
	full := &model.Snapshot{Pods: []*corev1.Pod{pod("10.0.0.2"), pod("10.0.0.3"), pod("10.0.0.4"), pod("10.0.0.5"), pod("10.0.0.6")}}
	if got, err := (&Files{}).freeAddr(netip.MustParsePrefix("10.0.0.0/29"), full, true); err == nil {
		t.Errorf("a full /29 gave %v", got)
	}
	if got, err := (&Files{}).freeAddr(netip.MustParsePrefix("10.0.0.0/29"), &model.Snapshot{Pods: full.Pods[1:]}, true); err != nil || got.String() != "10.0.0.2" {
		t.Errorf("a /29 with only .2 free: %v, %v", got, err)
	}
	if _, err := f.freeAddr(netip.Prefix{}, s, true); err == nil {
		t.Error("no range: no error")
	}
}

// A waypoint Gateway the deployer would refuse (a bad listener, a
// parametersRef to a ConfigMap that is not there) is reported with the
// field, once per change, and the waypoint of its last good version keeps
// running; a good version again clears the report. Nothing is started:
// the context is done, so only the decisions run.
func TestWaypointRejectionKeepsTheLastGood(t *testing.T) {
	var logs testutil.SyncBuffer
	f := &Files{Node: "node-2", Waypoints: &FilesWaypoints{Options: deployer.Options{Image: "zmesh/waypoint:test"}},
		Log: slog.New(slog.NewJSONHandler(&logs, nil))}
	gw := func(port gatewayv1.PortNumber) *gatewayv1.Gateway {
		return &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "wp"},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: deployer.ClassName,
				Listeners:      []gatewayv1.Listener{{Name: "mesh", Port: port, Protocol: "HBONE"}},
				Infrastructure: &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Kind: "ConfigMap", Name: "wp-params"}}},
		}
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "wp-params"},
		Data: map[string]string{"deployment": "spec:\n  template:\n    metadata:\n      annotations: {team: shop}\n"}}
	good := &model.Snapshot{Gateways: []*gatewayv1.Gateway{gw(15008)}, ConfigMaps: []*corev1.ConfigMap{cm}}
	o, err := deployer.DesiredWith(good.Gateways[0], f.Waypoints.Options, func(string, string) *corev1.ConfigMap { return cm })
	if err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: "apps", Name: "wp"}
	running := &runningWaypoint{pod: &RunningPod{IP: netip.MustParseAddr("10.50.2.253")}, spec: specOf(o)}
	f.waypoints = map[types.NamespacedName]*runningWaypoint{key: running}
	done, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tc := range []struct {
		name string
		snap *model.Snapshot
		want string
	}{
		{"bad listener", &model.Snapshot{Gateways: []*gatewayv1.Gateway{gw(15009)}, ConfigMaps: []*corev1.ConfigMap{cm}}, "spec.listeners[0].port: 15009, want 15008"},
		{"bad listener again", &model.Snapshot{Gateways: []*gatewayv1.Gateway{gw(15009)}, ConfigMaps: []*corev1.ConfigMap{cm}}, "spec.listeners[0].port: 15009, want 15008"},
		{"ConfigMap gone", &model.Snapshot{Gateways: []*gatewayv1.Gateway{gw(15008)}}, "ConfigMap apps/wp-params (spec.infrastructure.parametersRef): not found"},
		{"good again", good, ""},
	} {
		if err := f.applyWaypoints(done, tc.snap); err != nil {
			t.Errorf("%s: apply: %v, want no error (a rejection is not retried)", tc.name, err)
		}
		if got := f.WaypointRejected("apps", "wp"); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("%s: rejected %q, want %q", tc.name, got, tc.want)
		}
		if f.waypoints[key] != running {
			t.Fatalf("%s: the running waypoint was stopped or replaced", tc.name)
		}
	}
	if n := strings.Count(logs.String(), "waypoint Gateway rejected"); n != 2 {
		t.Errorf("%d rejection log lines, want 2 (one per change):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"last_good_running":true`) {
		t.Errorf("the rejection log does not say the last good waypoint runs:\n%s", logs.String())
	}
}

// A waypoint that fails to start is not tried again on every sync: the
// same desired objects wait 1 s, then 2 s, … (up to a minute); a Gateway
// removed forgets its failures.
func TestWaypointStartBackoff(t *testing.T) {
	// No pod range: the start fails before anything is created.
	f := &Files{Node: "node-2", Waypoints: &FilesWaypoints{Options: deployer.Options{Image: "zmesh/waypoint:test"}}}
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "wp"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: deployer.ClassName,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}
	snap := &model.Snapshot{Gateways: []*gatewayv1.Gateway{gw}}
	key := types.NamespacedName{Namespace: "apps", Name: "wp"}
	ctx := t.Context()
	if err := f.applyWaypoints(ctx, snap); err == nil || !strings.Contains(err.Error(), "pod address") {
		t.Fatalf("first try: %v, want the start's error", err)
	}
	first := f.retry[key]
	if first == nil || first.delay != time.Second {
		t.Fatalf("after the first failure: %+v, want a retry in 1s", first)
	}
	if err := f.applyWaypoints(ctx, snap); err == nil || !strings.Contains(err.Error(), "tried again 1s after the last try") || f.retry[key] != first {
		t.Errorf("a sync within the backoff: %v, want no new try", err)
	}
	first.next = time.Now().Add(-time.Millisecond)
	f.applyWaypoints(ctx, snap)
	if r := f.retry[key]; r == nil || r.delay != 2*time.Second {
		t.Errorf("after the second failure: %+v, want a retry in 2s", r)
	}
	f.retry[key].delay, f.retry[key].next = waypointMaxBackoff, time.Now().Add(-time.Millisecond)
	f.applyWaypoints(ctx, snap)
	if r := f.retry[key]; r == nil || r.delay != waypointMaxBackoff {
		t.Errorf("backoff past the cap: %+v, want %s", r, waypointMaxBackoff)
	}
	f.applyWaypoints(ctx, &model.Snapshot{})
	if len(f.retry) != 0 {
		t.Errorf("the Gateway went but its failures stay: %v", f.retry)
	}
}
