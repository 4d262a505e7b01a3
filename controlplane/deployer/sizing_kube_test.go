package deployer

import (
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/zmesh/zmesh/internal/testutil"
)

// TestSizingOnKubernetes: with autoscaling and a budget configured, the
// controller (as zmeshd's service account, deploy/rbac) gives a waypoint
// an HPA and a PDB owned by its Gateway; run again with them off, it
// deletes both, and with replicas set the Deployment carries them.
func TestSizingOnKubernetes(t *testing.T) {
	env := newControllerEnv(t)
	ctx := t.Context()
	on := Sizing{Autoscaling: &Autoscaling{Enabled: true, MinReplicas: 2, MaxReplicas: 6, TargetCPUUtilizationPercentage: 70},
		PodDisruptionBudget: &DisruptionBudget{Enabled: true, MinAvailable: intstr.FromInt32(1)}}
	stop := env.start(t, Options{Image: image, Sizing: on})
	created := env.createWaypoint(t, nil)
	testutil.Eventually(t, 60*time.Second, "the waypoint's HPA and PDB", func() error {
		h, err := env.Client.AutoscalingV2().HorizontalPodAutoscalers("apps").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h.Spec.MaxReplicas != 6 || *h.Spec.MinReplicas != 2 || h.Spec.ScaleTargetRef.Name != "waypoint" ||
			metav1.GetControllerOf(h) == nil || metav1.GetControllerOf(h).UID != created.UID {
			t.Fatalf("HPA %+v, owner %v", h.Spec, h.OwnerReferences)
		}
		p, err := env.Client.PolicyV1().PodDisruptionBudgets("apps").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Spec.MinAvailable.IntValue() != 1 || metav1.GetControllerOf(p) == nil || metav1.GetControllerOf(p).UID != created.UID {
			t.Fatalf("PDB %+v, owner %v", p.Spec, p.OwnerReferences)
		}
		return nil
	})
	d, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range d.ManagedFields {
		if mf.Manager == FieldManager && mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:replicas"`) {
			t.Errorf("with an autoscaler the controller owns the Deployment's replicas")
		}
	}
	stop()

	stop = env.start(t, Options{Image: image, Sizing: Sizing{Replicas: 3}})
	defer stop()
	testutil.Eventually(t, 60*time.Second, "HPA and PDB deleted, 3 replicas", func() error {
		if _, err := env.Client.AutoscalingV2().HorizontalPodAutoscalers("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("HPA still there (%v)", err)
		}
		if _, err := env.Client.PolicyV1().PodDisruptionBudgets("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("PDB still there (%v)", err)
		}
		d, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			return fmt.Errorf("replicas %v", d.Spec.Replicas)
		}
		return nil
	})
}
