package deployer

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The chart's waypoint values reach each waypoint's objects: replicas and
// resources on the Deployment, a PodDisruptionBudget selecting its pods,
// and with autoscaling an HPA that owns the replicas instead.
func TestDesiredSizing(t *testing.T) {
	gw := gateway(nil)
	base := Options{Image: "zmesh/waypoint:test"}

	o, err := Desired(gw, base)
	if err != nil {
		t.Fatal(err)
	}
	if o.Deployment.Spec.Replicas != nil || o.HorizontalPodAutoscaler != nil || o.PodDisruptionBudget != nil {
		t.Errorf("no sizing: replicas %v, HPA %v, PDB %v; want none", o.Deployment.Spec.Replicas, o.HorizontalPodAutoscaler, o.PodDisruptionBudget)
	}
	if r := o.Deployment.Spec.Template.Spec.Containers[0].Resources; len(r.Requests) != 0 || len(r.Limits) != 0 {
		t.Errorf("no sizing: resources %v", r)
	}

	sized := base
	sized.Sizing, err = ParseSizing([]byte(`{"replicas":3,"resources":{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"1Gi"}},
		"autoscaling":{"enabled":false,"minReplicas":1,"maxReplicas":5,"targetCPUUtilizationPercentage":80},
		"podDisruptionBudget":{"enabled":true,"minAvailable":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if o, err = Desired(gw, sized); err != nil {
		t.Fatal(err)
	}
	if r := o.Deployment.Spec.Replicas; r == nil || *r != 3 {
		t.Errorf("replicas %v, want 3", r)
	}
	res := o.Deployment.Spec.Template.Spec.Containers[0].Resources
	if !res.Requests.Cpu().Equal(resource.MustParse("100m")) || !res.Limits.Memory().Equal(resource.MustParse("1Gi")) {
		t.Errorf("resources %v", res)
	}
	pdb := o.PodDisruptionBudget
	if pdb == nil || o.HorizontalPodAutoscaler != nil {
		t.Fatalf("PDB %v, HPA %v; want a PDB only", pdb, o.HorizontalPodAutoscaler)
	}
	if pdb.Name != gw.Name || pdb.Namespace != gw.Namespace || *pdb.Spec.MinAvailable != intstr.FromInt32(1) ||
		pdb.Spec.Selector.MatchLabels["gateway.networking.k8s.io/gateway-name"] != gw.Name ||
		len(pdb.OwnerReferences) != 1 || pdb.OwnerReferences[0].UID != gw.UID {
		t.Errorf("PDB %+v", pdb)
	}

	scaled := sized
	scaled.Sizing.Autoscaling.Enabled = true
	if o, err = Desired(gw, scaled); err != nil {
		t.Fatal(err)
	}
	if o.Deployment.Spec.Replicas != nil {
		t.Errorf("with an autoscaler the Deployment still sets replicas %d", *o.Deployment.Spec.Replicas)
	}
	h := o.HorizontalPodAutoscaler
	if h == nil {
		t.Fatal("autoscaling on, no HPA")
	}
	if h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != gw.Name || *h.Spec.MinReplicas != 1 || h.Spec.MaxReplicas != 5 ||
		len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU || *h.Spec.Metrics[0].Resource.Target.AverageUtilization != 80 {
		t.Errorf("HPA %+v", h.Spec)
	}
}

func TestParseSizingRefuses(t *testing.T) {
	for in, want := range map[string]string{
		`{"replica":2}`:   `unknown field "replica"`,
		`{"replicas":-1}`: "replicas: -1",
		`{"autoscaling":{"enabled":true,"minReplicas":3,"maxReplicas":2}}`:                                 "autoscaling.maxReplicas: 2, below minReplicas 3",
		`{"autoscaling":{"enabled":true,"maxReplicas":2,"targetCPUUtilizationPercentage":-5}}`:             "targetCPUUtilizationPercentage: -5",
		`{"podDisruptionBudget":{"enabled":true,"minAvailable":"50%"},"resources":{"limits":{"cpu":"x"}}}`: "resources",
	} {
		if _, err := ParseSizing([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSizing(%s) = %v, want an error with %q", in, err, want)
		}
	}
	s, err := ParseSizing([]byte(`{"podDisruptionBudget":{"enabled":true,"minAvailable":"50%"}}`))
	if err != nil || s.PodDisruptionBudget.MinAvailable != intstr.FromString("50%") {
		t.Errorf("a percentage floor: %+v, %v", s.PodDisruptionBudget, err)
	}
}
