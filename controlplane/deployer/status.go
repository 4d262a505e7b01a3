package deployer

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// outcome is what a reconcile found, to be reported in the Gateway's
// status.
type outcome struct {
	// invalid is set when the Gateway cannot be a waypoint.
	invalid *invalid
	// blocked is set when an object of the waypoint's name exists and
	// belongs to someone else.
	blocked string
	// address is the Service's ClusterIP; empty until allocated.
	address string
}

// gatewayStatus returns gw's status updated with o, keeping the transition
// times of conditions whose status did not change and conditions of other
// types untouched.
func gatewayStatus(gw *gatewayv1.Gateway, o outcome) gatewayv1.GatewayStatus {
	st := *gw.Status.DeepCopy()
	set := func(typ gatewayv1.GatewayConditionType, ok bool, reason gatewayv1.GatewayConditionReason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: string(typ), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: gw.Generation,
		})
	}
	switch {
	case o.invalid != nil:
		set(gatewayv1.GatewayConditionAccepted, false, o.invalid.reason, o.invalid.message)
		set(gatewayv1.GatewayConditionProgrammed, false, gatewayv1.GatewayReasonInvalid,
			"not a valid waypoint (see Accepted); objects of an earlier valid version are kept as they were")
		st.Addresses = nil
		return st
	default:
		set(gatewayv1.GatewayConditionAccepted, true, gatewayv1.GatewayReasonAccepted, "waypoint accepted")
	}
	switch {
	case o.blocked != "":
		set(gatewayv1.GatewayConditionProgrammed, false, gatewayv1.GatewayReasonInvalid, o.blocked)
		st.Addresses = nil
	case o.address == "":
		set(gatewayv1.GatewayConditionProgrammed, false, gatewayv1.GatewayReasonAddressNotAssigned,
			fmt.Sprintf("waiting for Service %s/%s to get a cluster IP", gw.Namespace, gw.Name))
		st.Addresses = nil
	default:
		// Honest about what is known: the objects exist and the address is
		// allocated; whether the waypoint's pods are ready is not checked.
		set(gatewayv1.GatewayConditionProgrammed, true, gatewayv1.GatewayReasonProgrammed,
			fmt.Sprintf("ServiceAccount, Deployment and Service %s/%s applied; address %s allocated (readiness of the waypoint's pods is not reported)", gw.Namespace, gw.Name, o.address))
		st.Addresses = []gatewayv1.GatewayStatusAddress{{Type: new(gatewayv1.IPAddressType), Value: o.address}}
	}
	return st
}

// classStatus returns the GatewayClass's status with Accepted=True.
func classStatus(gc *gatewayv1.GatewayClass) gatewayv1.GatewayClassStatus {
	st := *gc.Status.DeepCopy()
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type:               string(gatewayv1.GatewayClassConditionStatusAccepted),
		Status:             metav1.ConditionTrue,
		Reason:             string(gatewayv1.GatewayClassReasonAccepted),
		Message:            "handled by zmesh's waypoint controller",
		ObservedGeneration: gc.Generation,
	})
	return st
}
