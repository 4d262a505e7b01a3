package deployer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Sizing is how every waypoint is scaled and sized: the chart's waypoint
// values, handed to zmeshd as JSON (--waypoint-defaults). The zero value
// leaves replicas to whoever scales the Deployment, sets no resources and
// creates no HorizontalPodAutoscaler or PodDisruptionBudget.
type Sizing struct {
	// Replicas of each waypoint Deployment; 0 leaves the field to users
	// (kubectl scale). Ignored when Autoscaling is on: the autoscaler owns
	// it then.
	Replicas int32 `json:"replicas,omitempty"`
	// Resources of the waypoint container.
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	// Autoscaling, when enabled, gives each waypoint a
	// HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation.
	Autoscaling *Autoscaling `json:"autoscaling,omitempty"`
	// PodDisruptionBudget, when enabled, gives each waypoint one.
	PodDisruptionBudget *DisruptionBudget `json:"podDisruptionBudget,omitempty"`
}

// Autoscaling are the HorizontalPodAutoscaler's bounds and target.
type Autoscaling struct {
	Enabled                        bool  `json:"enabled"`
	MinReplicas                    int32 `json:"minReplicas,omitempty"`
	MaxReplicas                    int32 `json:"maxReplicas"`
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// DisruptionBudget is a PodDisruptionBudget's floor.
type DisruptionBudget struct {
	Enabled      bool               `json:"enabled"`
	MinAvailable intstr.IntOrString `json:"minAvailable"`
}

// ParseSizing reads a Sizing from JSON, refusing unknown fields (a typo
// in a value would otherwise be dropped silently) and values that would
// make objects the API server refuses.
func ParseSizing(b []byte) (Sizing, error) {
	// Resources are decoded on their own, so that a bad quantity's error
	// names the field.
	var wire struct {
		Sizing
		Resources json.RawMessage `json:"resources,omitempty"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wire); err != nil {
		return Sizing{}, fmt.Errorf("waypoint sizing: %w", err)
	}
	s := wire.Sizing
	if len(wire.Resources) > 0 && string(wire.Resources) != "null" {
		dec := json.NewDecoder(bytes.NewReader(wire.Resources))
		dec.DisallowUnknownFields()
		s.Resources = new(corev1.ResourceRequirements)
		if err := dec.Decode(s.Resources); err != nil {
			return Sizing{}, fmt.Errorf("waypoint sizing: resources: %w", err)
		}
	}
	if s.Replicas < 0 {
		return Sizing{}, fmt.Errorf("waypoint sizing: replicas: %d, want 0 (unset) or more", s.Replicas)
	}
	if a := s.Autoscaling; a != nil && a.Enabled {
		if a.MinReplicas < 1 {
			a.MinReplicas = 1
		}
		if a.MaxReplicas < a.MinReplicas {
			return Sizing{}, fmt.Errorf("waypoint sizing: autoscaling.maxReplicas: %d, below minReplicas %d", a.MaxReplicas, a.MinReplicas)
		}
		if a.TargetCPUUtilizationPercentage < 0 {
			return Sizing{}, fmt.Errorf("waypoint sizing: autoscaling.targetCPUUtilizationPercentage: %d, want 1 or more", a.TargetCPUUtilizationPercentage)
		}
		if a.TargetCPUUtilizationPercentage == 0 {
			a.TargetCPUUtilizationPercentage = 80
		}
	}
	return s, nil
}

func (s Sizing) autoscaled() bool { return s.Autoscaling != nil && s.Autoscaling.Enabled }
func (s Sizing) budgeted() bool   { return s.PodDisruptionBudget != nil && s.PodDisruptionBudget.Enabled }

// hpa is the waypoint's HorizontalPodAutoscaler, nil if off.
func (s Sizing) hpa(gw *gatewayv1.Gateway, labels map[string]string, owner *metav1ac.OwnerReferenceApplyConfiguration) *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration {
	if !s.autoscaled() {
		return nil
	}
	a := s.Autoscaling
	return autoscalingv2ac.HorizontalPodAutoscaler(gw.Name, gw.Namespace).
		WithLabels(labels).WithOwnerReferences(owner).
		WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().
			WithScaleTargetRef(autoscalingv2ac.CrossVersionObjectReference().
				WithAPIVersion("apps/v1").WithKind("Deployment").WithName(gw.Name)).
			WithMinReplicas(a.MinReplicas).WithMaxReplicas(a.MaxReplicas).
			WithMetrics(autoscalingv2ac.MetricSpec().
				WithType("Resource").
				WithResource(autoscalingv2ac.ResourceMetricSource().
					WithName(corev1.ResourceCPU).
					WithTarget(autoscalingv2ac.MetricTarget().
						WithType("Utilization").WithAverageUtilization(a.TargetCPUUtilizationPercentage)))))
}

// pdb is the waypoint's PodDisruptionBudget, nil if off.
func (s Sizing) pdb(gw *gatewayv1.Gateway, labels, selector map[string]string, owner *metav1ac.OwnerReferenceApplyConfiguration) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	if !s.budgeted() {
		return nil
	}
	return policyv1ac.PodDisruptionBudget(gw.Name, gw.Namespace).
		WithLabels(labels).WithOwnerReferences(owner).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMinAvailable(s.PodDisruptionBudget.MinAvailable).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)))
}

// resources converts the container's resources to their apply form.
func (s Sizing) resources() *corev1ac.ResourceRequirementsApplyConfiguration {
	if s.Resources == nil {
		return nil
	}
	r := corev1ac.ResourceRequirements()
	if s.Resources.Requests != nil {
		r.WithRequests(s.Resources.Requests)
	}
	if s.Resources.Limits != nil {
		r.WithLimits(s.Resources.Limits)
	}
	return r
}

// applySizing applies the waypoint's autoscaler and budget, or deletes
// those the Gateway owns when the sizing no longer asks for them.
func (r *run) applySizing(ctx context.Context, gw *gatewayv1.Gateway, want objects) error {
	hpas := r.kube.AutoscalingV2().HorizontalPodAutoscalers(gw.Namespace)
	if want.hpa != nil {
		if _, err := hpas.Apply(ctx, want.hpa, applyOptions); err != nil {
			return fmt.Errorf("apply HorizontalPodAutoscaler: %w", err)
		}
	} else if err := deleteOwned(ctx, gw, func() (metav1.Object, error) { return hpas.Get(ctx, gw.Name, metav1.GetOptions{}) },
		func(o metav1.DeleteOptions) error { return hpas.Delete(ctx, gw.Name, o) }); err != nil {
		return fmt.Errorf("delete HorizontalPodAutoscaler: %w", err)
	}
	pdbs := r.kube.PolicyV1().PodDisruptionBudgets(gw.Namespace)
	if want.pdb != nil {
		if _, err := pdbs.Apply(ctx, want.pdb, applyOptions); err != nil {
			return fmt.Errorf("apply PodDisruptionBudget: %w", err)
		}
	} else if err := deleteOwned(ctx, gw, func() (metav1.Object, error) { return pdbs.Get(ctx, gw.Name, metav1.GetOptions{}) },
		func(o metav1.DeleteOptions) error { return pdbs.Delete(ctx, gw.Name, o) }); err != nil {
		return fmt.Errorf("delete PodDisruptionBudget: %w", err)
	}
	return nil
}

// deleteOwned deletes the object get returns if gw controls it; one of
// the same name that someone else made is left alone.
func deleteOwned(ctx context.Context, gw *gatewayv1.Gateway, get func() (metav1.Object, error), del func(metav1.DeleteOptions) error) error {
	obj, err := get()
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ref := metav1.GetControllerOf(obj); ref == nil || ref.UID != gw.UID {
		return nil
	}
	uid := obj.GetUID()
	err = del(metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}
