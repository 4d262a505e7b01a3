package deployer

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/internal/testutil"
)

// TestParametersOnKubernetes: a waypoint Gateway's
// spec.infrastructure.parametersRef names a ConfigMap whose patches the
// controller (as zmeshd's service account) merges into the generated
// objects: the Deployment's container resources and an autoscaler. A
// change of the ConfigMap re-renders them; a patch that does not decode,
// and then a missing ConfigMap, make the Gateway Accepted=False
// InvalidParameters naming the key and the problem, with the Deployment
// left as it was.
func TestParametersOnKubernetes(t *testing.T) {
	env := newControllerEnv(t)
	ctx := t.Context()
	defer env.start(t, Options{Image: image})()

	cms := env.Client.CoreV1().ConfigMaps("apps")
	patches := func(cpu string) map[string]string {
		return map[string]string{
			"deployment": fmt.Sprintf(`
spec:
  template:
    spec:
      containers:
      - name: waypoint
        resources:
          requests:
            cpu: %s
`, cpu),
			"horizontalPodAutoscaler": "spec:\n  minReplicas: 2\n  maxReplicas: 5\n",
		}
	}
	cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-sizing"}, Data: patches("500m")}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env.createWaypoint(t, func(gw *gatewayv1.Gateway) {
		gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Group: "", Kind: "ConfigMap", Name: "waypoint-sizing"}}
	})

	cpuIs := func(want string) func() error {
		return func() error {
			d, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := d.Spec.Template.Spec.Containers
			if len(c) != 1 || c[0].Image != image || !c[0].Resources.Requests.Cpu().Equal(resource.MustParse(want)) {
				return fmt.Errorf("containers %+v, want cpu request %s", c, want)
			}
			return nil
		}
	}
	accepted := func(status metav1.ConditionStatus, reason, contains string) func() error {
		return func() error {
			g, err := env.admin.GatewayV1().Gateways("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionAccepted))
			if c == nil || c.Status != status || c.Reason != reason || !strings.Contains(c.Message, contains) {
				return fmt.Errorf("Accepted %+v, want %s %s containing %q", c, status, reason, contains)
			}
			return nil
		}
	}
	testutil.Eventually(t, 60*time.Second, "the deployment patch applied", cpuIs("500m"))
	testutil.Eventually(t, 30*time.Second, "the autoscaler patch applied", func() error {
		h, err := env.Client.AutoscalingV2().HorizontalPodAutoscalers("apps").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h.Spec.MaxReplicas != 5 || h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != 2 || h.Spec.ScaleTargetRef.Name != "waypoint" {
			return fmt.Errorf("HPA %+v", h.Spec)
		}
		return nil
	})
	testutil.Eventually(t, 30*time.Second, "accepted", accepted(metav1.ConditionTrue, string(gatewayv1.GatewayReasonAccepted), ""))

	// A change of the ConfigMap re-renders.
	cm.Data = patches("700m")
	if cm, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "the changed patch applied", cpuIs("700m"))

	// A patch that does not decode: InvalidParameters, the Deployment kept.
	cm.Data["deployment"] = "spec:\n  replcias: 3\n"
	if _, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "InvalidParameters for the bad patch",
		accepted(metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalidParameters), `data[deployment]: does not decode: json: unknown field "replcias"`))
	if err := cpuIs("700m")(); err != nil {
		t.Errorf("after a bad patch: %v", err)
	}

	// The ConfigMap gone: InvalidParameters, the Deployment kept.
	if err := cms.Delete(ctx, "waypoint-sizing", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "InvalidParameters for the missing ConfigMap",
		accepted(metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalidParameters), "ConfigMap apps/waypoint-sizing (spec.infrastructure.parametersRef): not found"))
	if err := cpuIs("700m")(); err != nil {
		t.Errorf("after the ConfigMap went: %v", err)
	}
}
