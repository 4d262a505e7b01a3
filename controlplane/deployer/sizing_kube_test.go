package deployer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

// TestSizingOnKubernetes: with autoscaling and a budget configured, the
// controller (as zmeshd's service account, deploy/rbac) gives a waypoint
// an HPA and a PDB owned by its Gateway; run again with them off, it
// deletes both, and with replicas set the Deployment carries them.
func TestSizingOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	if err := env.WaitEstablished(ctx, 60*time.Second, "gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	env.MustKubectl(t, "", "create", "namespace", "apps")
	cfg := env.AsServiceAccount("istio-system", "zmeshd")
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gwc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runWith := func(s Sizing) (stop func()) {
		ctrl, err := New(kube, gwc, Options{Image: image, Sizing: s, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ctrl.Run(runCtx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}

	on := Sizing{Autoscaling: &Autoscaling{Enabled: true, MinReplicas: 2, MaxReplicas: 6, TargetCPUUtilizationPercentage: 70},
		PodDisruptionBudget: &DisruptionBudget{Enabled: true, MinAvailable: intstr.FromInt32(1)}}
	stop := runWith(on)
	var gw gatewayv1.Gateway
	if err := yaml.Unmarshal([]byte(docsWaypoint), &gw); err != nil {
		t.Fatal(err)
	}
	admin, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	created, err := admin.GatewayV1().Gateways("apps").Create(ctx, &gw, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
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

	stop = runWith(Sizing{Replicas: 3})
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
