package noderunner

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/zmesh/zmesh/controlplane/model"
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
