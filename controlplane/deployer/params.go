package deployer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/model"
)

// The keys of a Gateway's parameters ConfigMap, as Istio reads them: each
// holds a YAML patch that is merged, as a strategic merge patch, into the
// object of that kind generated for the Gateway.
const (
	paramDeployment     = "deployment"
	paramService        = "service"
	paramHPA            = "horizontalPodAutoscaler"
	paramPDB            = "podDisruptionBudget"
	paramServiceAccount = "serviceAccount"
)

var paramKeys = []string{paramDeployment, paramService, paramHPA, paramPDB, paramServiceAccount}

// parametersName is the ConfigMap the Gateway's
// spec.infrastructure.parametersRef names ("" for none), or why the
// reference cannot be followed.
func parametersName(gw *gatewayv1.Gateway) (string, *invalid) {
	inf := gw.Spec.Infrastructure
	if inf == nil || inf.ParametersRef == nil {
		return "", nil
	}
	ref := inf.ParametersRef
	if ref.Group != "" || ref.Kind != "ConfigMap" {
		return "", &invalid{gatewayv1.GatewayReasonInvalidParameters, fmt.Sprintf(
			"spec.infrastructure.parametersRef: kind %q of group %q is not supported (only ConfigMap, group \"\")", ref.Kind, ref.Group)}
	}
	if ref.Name == "" {
		return "", &invalid{gatewayv1.GatewayReasonInvalidParameters, "spec.infrastructure.parametersRef.name: required"}
	}
	return ref.Name, nil
}

// customize merges the patches of the Gateway's parameters ConfigMap (nil:
// not found) into want. An autoscaler or a budget patch creates the object
// when the cluster-wide sizing has none, from the controller's base (the
// Deployment as target, the waypoint's pods as selector); with an
// autoscaler the Deployment's replicas are left to it unless the
// deployment patch sets them. The fields that tie the objects to the
// Gateway and to each other (names, owners, selectors, the waypoint's
// service account and gateway-name pod label) stay the controller's: a
// patch changing them is refused. Any problem is an *invalid naming the
// key; want is then unusable.
func customize(gw *gatewayv1.Gateway, want *objects, name string, cm *corev1.ConfigMap) *invalid {
	bad := func(format string, args ...any) *invalid {
		return &invalid{gatewayv1.GatewayReasonInvalidParameters, fmt.Sprintf("ConfigMap %s/%s (spec.infrastructure.parametersRef): ", gw.Namespace, name) + fmt.Sprintf(format, args...)}
	}
	if cm == nil {
		return bad("not found")
	}
	if len(cm.BinaryData) > 0 {
		return bad("binaryData: not read; the patches are text under data[%s]", joinKeys())
	}
	for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
		if !slices.Contains(paramKeys, k) {
			return bad("data[%s]: unknown key (%s)", k, joinKeys())
		}
	}
	labels, owners := want.service.Labels, want.service.OwnerReferences
	selector := map[string]string{model.LabelGatewayName: gw.Name}

	if p, ok := cm.Data[paramServiceAccount]; ok {
		var sa corev1.ServiceAccount
		if err := patchInto(want.serviceAccount, p, &sa, &want.serviceAccount); err != nil {
			return bad("data[%s]: %v", paramServiceAccount, err)
		}
		if err := sameMeta(sa.ObjectMeta.Name, sa.ObjectMeta.Namespace, gw); err != nil {
			return bad("data[%s]: %v", paramServiceAccount, err)
		}
	}
	if p, ok := cm.Data[paramService]; ok {
		var svc corev1.Service
		if err := patchInto(want.service, p, &svc, &want.service); err != nil {
			return bad("data[%s]: %v", paramService, err)
		}
		if err := sameMeta(svc.Name, svc.Namespace, gw); err != nil {
			return bad("data[%s]: %v", paramService, err)
		}
		if !maps.Equal(svc.Spec.Selector, selector) {
			return bad("data[%s]: spec.selector: %v, must stay %v (the waypoint's pods)", paramService, svc.Spec.Selector, selector)
		}
	}
	if p, ok := cm.Data[paramHPA]; ok {
		base := want.hpa
		if base == nil {
			base = autoscalingv2ac.HorizontalPodAutoscaler(gw.Name, gw.Namespace).
				WithLabels(labels).WithOwnerReferences(ownerConfigs(owners)...).
				WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().
					WithScaleTargetRef(autoscalingv2ac.CrossVersionObjectReference().
						WithAPIVersion("apps/v1").WithKind("Deployment").WithName(gw.Name)))
		}
		var hpa autoscalingv2.HorizontalPodAutoscaler
		if err := patchInto(base, p, &hpa, &want.hpa); err != nil {
			return bad("data[%s]: %v", paramHPA, err)
		}
		if err := sameMeta(hpa.Name, hpa.Namespace, gw); err != nil {
			return bad("data[%s]: %v", paramHPA, err)
		}
		if t := hpa.Spec.ScaleTargetRef; t.Kind != "Deployment" || t.Name != gw.Name || t.APIVersion != "apps/v1" {
			return bad("data[%s]: spec.scaleTargetRef: must stay the waypoint's Deployment (apps/v1 Deployment %s)", paramHPA, gw.Name)
		}
	}
	if p, ok := cm.Data[paramPDB]; ok {
		base := want.pdb
		if base == nil {
			base = policyv1ac.PodDisruptionBudget(gw.Name, gw.Namespace).
				WithLabels(labels).WithOwnerReferences(ownerConfigs(owners)...).
				WithSpec(policyv1ac.PodDisruptionBudgetSpec().
					WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)))
		}
		var pdb policyv1.PodDisruptionBudget
		if err := patchInto(base, p, &pdb, &want.pdb); err != nil {
			return bad("data[%s]: %v", paramPDB, err)
		}
		if err := sameMeta(pdb.Name, pdb.Namespace, gw); err != nil {
			return bad("data[%s]: %v", paramPDB, err)
		}
		if s := pdb.Spec.Selector; s == nil || len(s.MatchExpressions) > 0 || !maps.Equal(s.MatchLabels, selector) {
			return bad("data[%s]: spec.selector: must stay matchLabels %v (the waypoint's pods)", paramPDB, selector)
		}
	}
	if p, ok := cm.Data[paramDeployment]; ok {
		var d appsv1.Deployment
		if err := patchInto(want.deployment, p, &d, &want.deployment); err != nil {
			return bad("data[%s]: %v", paramDeployment, err)
		}
		if err := sameMeta(d.Name, d.Namespace, gw); err != nil {
			return bad("data[%s]: %v", paramDeployment, err)
		}
		if s := d.Spec.Selector; s == nil || len(s.MatchExpressions) > 0 || !maps.Equal(s.MatchLabels, selector) {
			return bad("data[%s]: spec.selector: must stay matchLabels %v (immutable, and the waypoint's Service selects by it)", paramDeployment, selector)
		}
		if v := d.Spec.Template.Labels[model.LabelGatewayName]; v != gw.Name {
			return bad("data[%s]: spec.template.metadata.labels[%s]: %q, must stay %q", paramDeployment, model.LabelGatewayName, v, gw.Name)
		}
		if sa := d.Spec.Template.Spec.ServiceAccountName; sa != gw.Name {
			// zmeshd tells which Gateway a waypoint serves by its
			// identity, the service account.
			return bad("data[%s]: spec.template.spec.serviceAccountName: %q, must stay %q (the waypoint's identity)", paramDeployment, sa, gw.Name)
		}
	}
	if want.hpa != nil && !setsReplicas(cm.Data[paramDeployment]) {
		// The autoscaler owns the replicas.
		want.deployment.Spec.Replicas = nil
	}
	return nil
}

// patchInto merges the YAML patch p into base (an apply configuration) as
// a strategic merge patch with the schema of typed, checks that the result
// decodes as typed with no unknown field, and stores it in out.
func patchInto[A any](base any, p string, typed any, out **A) error {
	patch, err := yaml.YAMLToJSON([]byte(p))
	if err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	var fields map[string]any
	if err := json.Unmarshal(patch, &fields); err != nil || fields == nil {
		return fmt.Errorf("not a YAML mapping (a patch of the object's fields)")
	}
	orig, err := json.Marshal(base)
	if err != nil {
		return err
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, patch, typed)
	if err != nil {
		return fmt.Errorf("does not apply: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(merged))
	dec.DisallowUnknownFields()
	if err := dec.Decode(typed); err != nil {
		return fmt.Errorf("does not decode: %w", err)
	}
	next := new(A)
	if err := json.Unmarshal(merged, next); err != nil {
		return fmt.Errorf("does not decode: %w", err)
	}
	*out = next
	return nil
}

// sameMeta refuses a patch that renamed or moved the object.
func sameMeta(name, namespace string, gw *gatewayv1.Gateway) error {
	if name != gw.Name || namespace != gw.Namespace {
		return fmt.Errorf("metadata: %s/%s, must stay %s/%s", namespace, name, gw.Namespace, gw.Name)
	}
	return nil
}

// setsReplicas reports whether a deployment patch sets spec.replicas.
func setsReplicas(p string) bool {
	var d struct {
		Spec struct {
			Replicas *int32 `json:"replicas"`
		} `json:"spec"`
	}
	return p != "" && yaml.Unmarshal([]byte(p), &d) == nil && d.Spec.Replicas != nil
}

func ownerConfigs(refs []metav1ac.OwnerReferenceApplyConfiguration) []*metav1ac.OwnerReferenceApplyConfiguration {
	out := make([]*metav1ac.OwnerReferenceApplyConfiguration, len(refs))
	for i := range refs {
		out[i] = &refs[i]
	}
	return out
}

func joinKeys() string {
	b, _ := json.Marshal(paramKeys)
	return string(b)
}
