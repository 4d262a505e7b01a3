package main

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/deploy/render"
)

// TestChartWaypointValuesReachTheDeployer renders the chart with waypoint
// values and parses the zmeshd container's arguments as zmeshd does: the
// deployer's sizing is what the values said.
func TestChartWaypointValuesReachTheDeployer(t *testing.T) {
	vals, err := render.ParseValues(nil, []string{
		"waypoint.replicas=4",
		"waypoint.podDisruptionBudget.enabled=true", "waypoint.podDisruptionBudget.minAvailable=2",
		"waypoint.autoscaling.maxReplicas=9",
		"waypoint.resources.requests.cpu=250m",
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := render.Render(render.Options{Values: vals})
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, m := range ms {
		if m.Kind == "Deployment" && m.Name == "zmeshd" {
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(m.YAML), &d); err != nil {
				t.Fatal(err)
			}
			args = d.Spec.Template.Spec.Containers[0].Args
		}
	}
	if args == nil {
		t.Fatal("the chart renders no zmeshd Deployment")
	}
	f, err := parseFlags(args)
	if err != nil {
		t.Fatalf("zmeshd refuses the chart's arguments %q: %v", args, err)
	}
	s := f.waypointSizing
	if s.Replicas != 4 || s.PodDisruptionBudget == nil || !s.PodDisruptionBudget.Enabled || s.PodDisruptionBudget.MinAvailable != intstr.FromInt32(2) {
		t.Errorf("sizing %+v: want 4 replicas and a budget of 2", s)
	}
	if s.Autoscaling == nil || s.Autoscaling.Enabled || s.Autoscaling.MaxReplicas != 9 {
		t.Errorf("autoscaling %+v: want off, max 9", s.Autoscaling)
	}
	if s.Resources == nil || !s.Resources.Requests.Cpu().Equal(resource.MustParse("250m")) || !s.Resources.Limits.Memory().Equal(resource.MustParse("1Gi")) {
		t.Errorf("resources %+v: want 250m CPU requested and the default 1Gi limit", s.Resources)
	}
}
