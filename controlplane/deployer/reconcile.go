package deployer

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var applyOptions = metav1.ApplyOptions{FieldManager: FieldManager, Force: true}

// reconcileGateway brings one waypoint's objects and status up to date.
func (r *run) reconcileGateway(ctx context.Context, key types.NamespacedName) error {
	gw, err := r.gateways.Gateways(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil // deleted: garbage collection removes what it owned
	}
	if err != nil {
		return err
	}
	if gw.Spec.GatewayClassName != ClassName || !gw.DeletionTimestamp.IsZero() {
		return nil
	}
	class, err := r.classes.Get(ClassName)
	if apierrors.IsNotFound(err) {
		return nil // onClass requeues once it exists
	}
	if err != nil {
		return err
	}
	if class.Spec.ControllerName != ControllerName {
		return nil // someone else's class
	}
	log := r.log.With("gateway", key.String())
	o := outcome{invalid: validate(gw)}
	var want objects
	if o.invalid == nil {
		want, o.invalid, err = r.desired(ctx, gw)
		if err != nil {
			return err
		}
	}
	if o.invalid == nil {
		o.address, o.blocked, err = r.apply(ctx, gw, want)
		if err != nil {
			return err
		}
	}
	changed, err := r.writeStatus(ctx, gw, o)
	if changed && (o.invalid != nil || o.blocked != "") {
		log.InfoContext(ctx, "waypoint not programmed", "reason", o.reasonText())
	}
	return err
}

func (o outcome) reasonText() string {
	if o.invalid != nil {
		return o.invalid.message
	}
	return o.blocked
}

// desired is what the waypoint's objects should be: the controller's,
// with the patches of the Gateway's parameters ConfigMap merged in. A
// reference that cannot be followed or a patch that does not apply makes
// the Gateway invalid (InvalidParameters), so its objects stay as they
// were.
func (r *run) desired(ctx context.Context, gw *gatewayv1.Gateway) (objects, *invalid, error) {
	want := desired(gw, r.opts)
	name, bad := parametersName(gw)
	if bad != nil || name == "" {
		return want, bad, nil
	}
	// Read live: the informer keeps ConfigMaps without their data.
	cm, err := r.kube.CoreV1().ConfigMaps(gw.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm, err = nil, nil
	}
	if err != nil {
		return objects{}, nil, fmt.Errorf("get parameters ConfigMap %s/%s: %w", gw.Namespace, name, err)
	}
	return want, customize(gw, &want, name, cm), nil
}

// apply server-side applies the waypoint's objects and returns the
// Service's cluster IP. blocked names an object of the waypoint's name that
// the Gateway does not own; then nothing is applied.
func (r *run) apply(ctx context.Context, gw *gatewayv1.Gateway, want objects) (address, blocked string, err error) {
	if blocked, err = r.foreign(ctx, gw); blocked != "" || err != nil {
		return "", blocked, err
	}
	if _, err := r.kube.CoreV1().ServiceAccounts(gw.Namespace).Apply(ctx, want.serviceAccount, applyOptions); err != nil {
		return "", "", fmt.Errorf("apply ServiceAccount: %w", err)
	}
	if _, err := r.kube.AppsV1().Deployments(gw.Namespace).Apply(ctx, want.deployment, applyOptions); err != nil {
		return "", "", fmt.Errorf("apply Deployment: %w", err)
	}
	svc, err := r.kube.CoreV1().Services(gw.Namespace).Apply(ctx, want.service, applyOptions)
	if err != nil {
		return "", "", fmt.Errorf("apply Service: %w", err)
	}
	if err := r.applySizing(ctx, gw, want); err != nil {
		return "", "", err
	}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != "None" {
		address = ip
	}
	return address, "", nil
}

// foreign checks that no object the waypoint needs exists under another
// controller or none: applying would take it over. The informers see only
// objects labelled as managed, so an object they miss is looked up.
func (r *run) foreign(ctx context.Context, gw *gatewayv1.Gateway) (string, error) {
	ns, name := gw.Namespace, gw.Name
	checks := []struct {
		kind   string
		cached func() (metav1.Object, error)
		get    func() (metav1.Object, error)
	}{
		{"ServiceAccount",
			func() (metav1.Object, error) { return r.accounts.ServiceAccounts(ns).Get(name) },
			func() (metav1.Object, error) {
				return r.kube.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
			}},
		{"Deployment",
			func() (metav1.Object, error) { return r.deployments.Deployments(ns).Get(name) },
			func() (metav1.Object, error) {
				return r.kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			}},
		{"Service",
			func() (metav1.Object, error) { return r.services.Services(ns).Get(name) },
			func() (metav1.Object, error) {
				return r.kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
			}},
	}
	for _, c := range checks {
		obj, err := c.cached()
		if apierrors.IsNotFound(err) {
			obj, err = c.get()
		}
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("get %s: %w", c.kind, err)
		}
		if ref := metav1.GetControllerOf(obj); ref == nil || ref.UID != gw.UID {
			return fmt.Sprintf("%s %s/%s exists and is not controlled by this Gateway: delete or rename it", c.kind, ns, name), nil
		}
	}
	return "", nil
}

// writeStatus updates the Gateway's status if it changed, and says whether
// it did.
func (r *run) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, o outcome) (bool, error) {
	st := gatewayStatus(gw, o)
	if equality.Semantic.DeepEqual(st, gw.Status) {
		return false, nil
	}
	next := gw.DeepCopy()
	next.Status = st
	if _, err := r.gw.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return false, fmt.Errorf("update status: %w", err)
	}
	return true, nil
}

// reconcileClass creates the waypoint GatewayClass if missing and accepts
// it if it is ours.
func (r *run) reconcileClass(ctx context.Context) error {
	gc, err := r.classes.Get(ClassName)
	if apierrors.IsNotFound(err) {
		gc, err = r.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: ClassName},
			Spec: gatewayv1.GatewayClassSpec{
				ControllerName: ControllerName,
				Description:    new("Waypoint proxies of the ambient mesh (zmesh, Istio-compatible)"),
			},
		}, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return nil // the informer will bring it
		}
		if err != nil {
			return fmt.Errorf("create GatewayClass %s: %w", ClassName, err)
		}
		r.log.InfoContext(ctx, "created GatewayClass", "class", ClassName)
	}
	if err != nil {
		return err
	}
	if gc.Spec.ControllerName != ControllerName {
		r.log.WarnContext(ctx, "GatewayClass belongs to another controller; its Gateways are left alone",
			"class", ClassName, "controller", string(gc.Spec.ControllerName))
		return nil
	}
	st := classStatus(gc)
	if equality.Semantic.DeepEqual(st, gc.Status) {
		return nil
	}
	next := gc.DeepCopy()
	next.Status = st
	if _, err := r.gw.GatewayV1().GatewayClasses().UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update GatewayClass status: %w", err)
	}
	return nil
}
