package deployer

import (
	"encoding/json"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Objects are the objects the controller keeps for one waypoint Gateway,
// as typed objects.
type Objects struct {
	ServiceAccount *corev1.ServiceAccount
	Deployment     *appsv1.Deployment
	Service        *corev1.Service
	// HorizontalPodAutoscaler and PodDisruptionBudget are nil unless
	// Options.Sizing asks for them.
	HorizontalPodAutoscaler *autoscalingv2.HorizontalPodAutoscaler
	PodDisruptionBudget     *policyv1.PodDisruptionBudget
}

// ConfigMapLookup returns the ConfigMap of that namespace and name, or nil
// if there is none.
type ConfigMapLookup func(namespace, name string) *corev1.ConfigMap

// Desired returns what the controller applies for gw, for runners that
// have no API server to apply it to (the demo's node runner starts the
// Deployment's pod itself): the same pure objects, converted from their
// apply configurations. A Gateway the controller would not program is an
// error naming the field. Desired has no ConfigMaps to read: a Gateway
// whose spec.infrastructure.parametersRef names one is refused as the
// controller refuses a reference to a missing ConfigMap; DesiredWith
// follows the reference.
func Desired(gw *gatewayv1.Gateway, opts Options) (Objects, error) {
	return DesiredWith(gw, opts, nil)
}

// DesiredWith is Desired with the Gateway's parameters ConfigMap taken
// from configMaps (nil: there are none), its patches merged and checked
// as the controller merges and checks them: a reference that cannot be
// followed, a ConfigMap that is not there or a patch that does not apply
// is an error naming the field, as in the Gateway's Accepted=False
// (InvalidParameters) condition.
func DesiredWith(gw *gatewayv1.Gateway, opts Options, configMaps ConfigMapLookup) (Objects, error) {
	if gw == nil {
		return Objects{}, errors.New("nil Gateway")
	}
	if gw.Spec.GatewayClassName != ClassName {
		return Objects{}, fmt.Errorf("spec.gatewayClassName: %q, want %q", gw.Spec.GatewayClassName, ClassName)
	}
	if bad := validate(gw); bad != nil {
		return Objects{}, errors.New(bad.message)
	}
	if opts.Image == "" {
		return Objects{}, errors.New("options: no waypoint image")
	}
	want := desired(gw, opts)
	name, bad := parametersName(gw)
	if bad == nil && name != "" {
		var cm *corev1.ConfigMap
		if configMaps != nil {
			cm = configMaps(gw.Namespace, name)
		}
		bad = customize(gw, &want, name, cm)
	}
	if bad != nil {
		return Objects{}, errors.New(bad.message)
	}
	var out Objects
	for _, c := range []struct {
		from, to any
	}{{want.serviceAccount, &out.ServiceAccount}, {want.deployment, &out.Deployment}, {want.service, &out.Service},
		{want.hpa, &out.HorizontalPodAutoscaler}, {want.pdb, &out.PodDisruptionBudget}} {
		b, err := json.Marshal(c.from)
		if err != nil {
			return Objects{}, err
		}
		if err := json.Unmarshal(b, c.to); err != nil {
			return Objects{}, err
		}
	}
	return out, nil
}
