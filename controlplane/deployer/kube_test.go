package deployer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"go.uber.org/goleak"

	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

// The waypoint of Istio's docs (istioctl waypoint generate).
const docsWaypoint = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/waypoint-for: service
  name: waypoint
  namespace: apps
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`

const image = "registry.example/zmesh/waypoint:test"

// TestControllerOnKubernetes runs the controller as zmeshd's service
// account (deploy/rbac) against a real API server with deploy/crds.
func TestControllerOnKubernetes(t *testing.T) {
	env := newControllerEnv(t)
	ctx := t.Context()
	before := goleak.IgnoreCurrent()
	stop := env.start(t, Options{Image: image, XDSAddress: "zmeshd.istio-system.svc:15012"})
	t.Cleanup(func() {
		stop()
		// Run's informers, queue and workers are gone; the clients'
		// pooled connections may stay.
		if err := goleak.Find(before,
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
		); err != nil {
			t.Error(err)
		}
	})

	t.Run("GatewayClass", func(t *testing.T) {
		testutil.Eventually(t, 60*time.Second, "GatewayClass istio-waypoint accepted", func() error {
			gc, err := env.admin.GatewayV1().GatewayClasses().Get(ctx, ClassName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if gc.Spec.ControllerName != ControllerName {
				return fmt.Errorf("controllerName %s", gc.Spec.ControllerName)
			}
			return conditionIs(gc.Status.Conditions, "Accepted", metav1.ConditionTrue)
		})
	})

	env.MustKubectl(t, docsWaypoint, "apply", "-f", "-")
	gw, err := env.admin.GatewayV1().Gateways("apps").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	core := env.Client.CoreV1()

	t.Run("objects with owner references", func(t *testing.T) {
		var dep *appsv1.Deployment
		testutil.Eventually(t, 60*time.Second, "Deployment", func() (err error) {
			dep, err = env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			return err
		})
		var svc *corev1.Service
		testutil.Eventually(t, 60*time.Second, "Service", func() (err error) {
			svc, err = core.Services("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			return err
		})
		var sa *corev1.ServiceAccount
		testutil.Eventually(t, 60*time.Second, "ServiceAccount", func() (err error) {
			sa, err = core.ServiceAccounts("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			return err
		})
		for _, o := range []metav1.Object{dep, svc, sa} {
			ref := metav1.GetControllerOf(o)
			if ref == nil || ref.UID != gw.UID || ref.Kind != "Gateway" {
				t.Errorf("%s: controller reference %+v, want the Gateway", o.GetName(), ref)
			}
			if o.GetLabels()["istio.io/waypoint-for"] != "service" || o.GetLabels()["gateway.networking.k8s.io/gateway-name"] != "waypoint" {
				t.Errorf("%s: labels %v", o.GetName(), o.GetLabels())
			}
		}
		if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "mesh" || svc.Spec.Ports[0].Port != 15008 {
			t.Errorf("Service spec %+v", svc.Spec)
		}
		for k, v := range svc.Spec.Selector {
			if dep.Spec.Template.Labels[k] != v {
				t.Errorf("Service selects %s=%s, pods have %q", k, v, dep.Spec.Template.Labels[k])
			}
		}
		c := dep.Spec.Template.Spec.Containers[0]
		if c.Image != image || !slices.Equal(c.Command, []string{"waypoint"}) || dep.Spec.Template.Spec.ServiceAccountName != "waypoint" {
			t.Errorf("Deployment runs %v of %s as %s", c.Command, c.Image, dep.Spec.Template.Spec.ServiceAccountName)
		}
	})

	programmedAt := func(t *testing.T, name, notIP string) string {
		t.Helper()
		var ip string
		testutil.Eventually(t, 60*time.Second, "Gateway "+name+" programmed with the Service's address", func() error {
			svc, err := core.Services("apps").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			g, err := env.admin.GatewayV1().Gateways("apps").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if err := conditionIs(g.Status.Conditions, "Accepted", metav1.ConditionTrue); err != nil {
				return err
			}
			if err := conditionIs(g.Status.Conditions, "Programmed", metav1.ConditionTrue); err != nil {
				return err
			}
			if len(g.Status.Addresses) != 1 || g.Status.Addresses[0].Value != svc.Spec.ClusterIP || svc.Spec.ClusterIP == notIP {
				return fmt.Errorf("addresses %+v, Service IP %s", g.Status.Addresses, svc.Spec.ClusterIP)
			}
			ip = svc.Spec.ClusterIP
			t.Logf("Programmed: %s", meta.FindStatusCondition(g.Status.Conditions, "Programmed").Message)
			return nil
		})
		return ip
	}
	var ip string
	t.Run("status", func(t *testing.T) { ip = programmedAt(t, "waypoint", "") })

	t.Run("deleted Service is re-created", func(t *testing.T) {
		old, err := core.Services("apps").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := core.Services("apps").Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 60*time.Second, "Service re-created", func() error {
			svc, err := core.Services("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if svc.UID == old.UID {
				return errors.New("still the old Service")
			}
			return nil
		})
		// The new Service's IP is allocated afresh; the status follows.
		newIP := programmedAt(t, "waypoint", "")
		t.Logf("address %s -> %s", ip, newIP)
	})

	t.Run("edited Deployment is restored", func(t *testing.T) {
		patch := `{"spec":{"template":{"spec":{"containers":[{"name":"waypoint","image":"tampered"}]}}}}`
		if _, err := env.Client.AppsV1().Deployments("apps").Patch(ctx, "waypoint", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 60*time.Second, "image restored", func() error {
			dep, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if img := dep.Spec.Template.Spec.Containers[0].Image; img != image {
				return fmt.Errorf("image %s", img)
			}
			return nil
		})
	})

	t.Run("waypoint-for is copied", func(t *testing.T) {
		env.MustKubectl(t, strings.NewReplacer("name: waypoint", "name: for-workloads", "waypoint-for: service", "waypoint-for: workload").Replace(docsWaypoint), "apply", "-f", "-")
		programmedAt(t, "for-workloads", "")
		svc, err := core.Services("apps").Get(ctx, "for-workloads", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v := svc.Labels["istio.io/waypoint-for"]; v != "workload" {
			t.Errorf("Service waypoint-for = %q", v)
		}
	})

	t.Run("wrong listener is not accepted", func(t *testing.T) {
		env.MustKubectl(t, strings.NewReplacer("name: waypoint", "name: bad", "port: 15008", "port: 8080").Replace(docsWaypoint), "apply", "-f", "-")
		testutil.Eventually(t, 60*time.Second, "Accepted=False naming the field", func() error {
			g, err := env.admin.GatewayV1().Gateways("apps").Get(ctx, "bad", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(g.Status.Conditions, "Accepted")
			if c == nil || c.Status != metav1.ConditionFalse || c.Reason != string(gatewayv1.GatewayReasonListenersNotValid) {
				return fmt.Errorf("Accepted %+v", c)
			}
			if !strings.Contains(c.Message, "spec.listeners[0].port") {
				return fmt.Errorf("message %q does not name the field", c.Message)
			}
			t.Logf("Accepted=False %s: %s", c.Reason, c.Message)
			return nil
		})
		if _, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "bad", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("Deployment of an invalid waypoint: %v", err)
		}
	})

	t.Run("someone else's Service is not taken over", func(t *testing.T) {
		if _, err := core.Services("apps").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "taken"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		env.MustKubectl(t, strings.NewReplacer("name: waypoint", "name: taken").Replace(docsWaypoint), "apply", "-f", "-")
		testutil.Eventually(t, 60*time.Second, "Programmed=False", func() error {
			g, err := env.admin.GatewayV1().Gateways("apps").Get(ctx, "taken", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(g.Status.Conditions, "Programmed")
			if c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "not controlled by this Gateway") {
				return fmt.Errorf("Programmed %+v", c)
			}
			return nil
		})
		svc, err := core.Services("apps").Get(ctx, "taken", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(svc.OwnerReferences) != 0 || svc.Spec.Ports[0].Port != 80 {
			t.Errorf("foreign Service changed: %+v", svc)
		}
	})

	t.Run("deleting the Gateway removes its objects", func(t *testing.T) {
		env.MustKubectl(t, "", "delete", "-n", "apps", "gateway", "waypoint")
		testutil.Eventually(t, 60*time.Second, "garbage collection", func() error {
			var left []string
			if _, err := env.Client.AppsV1().Deployments("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				left = append(left, "Deployment")
			}
			if _, err := core.Services("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				left = append(left, "Service")
			}
			if _, err := core.ServiceAccounts("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				left = append(left, "ServiceAccount")
			}
			if len(left) > 0 {
				return fmt.Errorf("still there: %v", left)
			}
			return nil
		})
	})

	t.Run("deleted GatewayClass is re-created", func(t *testing.T) {
		env.MustKubectl(t, "", "delete", "gatewayclass", ClassName)
		testutil.Eventually(t, 60*time.Second, "GatewayClass back", func() error {
			_, err := env.admin.GatewayV1().GatewayClasses().Get(ctx, ClassName, metav1.GetOptions{})
			return err
		})
	})
}

func conditionIs(conds []metav1.Condition, typ string, want metav1.ConditionStatus) error {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil || c.Status != want {
		return fmt.Errorf("%s condition %+v, want %s", typ, c, want)
	}
	return nil
}

// controllerEnv is a real API server with deploy/crds, deploy/rbac and a
// namespace apps, and the clients of a controller test.
type controllerEnv struct {
	*kubetest.Env
	// kube and gwc act as zmeshd's service account: everything the
	// controller does, it does as zmeshd.
	kube kubernetes.Interface
	gwc  gatewayclient.Interface
	// admin is the cluster admin's client, for what users create.
	admin gatewayclient.Interface
}

func newControllerEnv(t *testing.T) controllerEnv {
	t.Helper()
	env := kubetest.ForTest(t)
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	if err := env.WaitEstablished(t.Context(), 60*time.Second, "gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io"); err != nil {
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
	admin, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return controllerEnv{Env: env, kube: kube, gwc: gwc, admin: admin}
}

// start runs a controller with opts, logging to the test, as zmeshd. stop
// cancels it and waits for Run to return, failing the test if Run
// returned an error or did not return in 30 s.
func (e controllerEnv) start(t *testing.T, opts Options) (stop func()) {
	t.Helper()
	opts.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctrl, err := New(e.kube, e.gwc, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
}

// createWaypoint creates the docs' waypoint Gateway in apps as the
// cluster admin, changed by edit first unless it is nil.
func (e controllerEnv) createWaypoint(t *testing.T, edit func(*gatewayv1.Gateway)) *gatewayv1.Gateway {
	t.Helper()
	var gw gatewayv1.Gateway
	if err := yaml.Unmarshal([]byte(docsWaypoint), &gw); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&gw)
	}
	created, err := e.admin.GatewayV1().Gateways("apps").Create(t.Context(), &gw, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// testWriter sends the controller's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
