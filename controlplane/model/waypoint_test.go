package model

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestUseWaypoint(t *testing.T) {
	for _, tc := range []struct {
		labels   map[string]string
		ns, name string
		labelled bool
	}{
		{nil, "", "", false},
		{map[string]string{LabelUseWaypoint: "wp"}, "app", "wp", true},
		{map[string]string{LabelUseWaypoint: "wp", LabelUseWaypointNamespace: "infra"}, "infra", "wp", true},
		{map[string]string{LabelUseWaypoint: "none"}, "", "", true},
		{map[string]string{LabelUseWaypoint: ""}, "", "", true},
		{map[string]string{LabelUseWaypointNamespace: "infra"}, "", "", false},
	} {
		ns, name, labelled := UseWaypoint(tc.labels, "app")
		if ns != tc.ns || name != tc.name || labelled != tc.labelled {
			t.Errorf("UseWaypoint(%v) = %q, %q, %v; want %q, %q, %v", tc.labels, ns, name, labelled, tc.ns, tc.name, tc.labelled)
		}
	}
}

func TestWaypointFor(t *testing.T) {
	for label, want := range map[string]struct {
		value               string
		workloads, services bool
	}{
		"":         {"service", false, true},
		"service":  {"service", false, true},
		"workload": {"workload", true, false},
		"all":      {"all", true, true},
		"none":     {"none", false, false},
		"bogus":    {"service", false, true},
	} {
		gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{}}}
		if label != "" {
			gw.Labels[LabelWaypointFor] = label
		}
		v, w, s := WaypointFor(gw)
		if v != want.value || w != want.workloads || s != want.services {
			t.Errorf("waypoint-for %q = %q, %v, %v; want %+v", label, v, w, s, want)
		}
	}
}
