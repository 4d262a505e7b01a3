package deployer

import (
	"fmt"
	"slices"

	"github.com/zmesh/zmesh/controlplane/model"
	"istio.io/api/label"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The waypoint GatewayClass, as Istio names it.
const (
	// ClassName is the GatewayClass of waypoints.
	ClassName = model.WaypointClass
	// ControllerName is the class's spec.controllerName: Istio's mesh
	// controller, so that a class installed by Istio is recognised.
	ControllerName gatewayv1.GatewayController = "istio.io/mesh-controller"
)

// The one listener a waypoint has.
const (
	ListenerName     = "mesh"
	ListenerPort     = 15008
	ListenerProtocol = "HBONE"
)

// Values of the istio.io/waypoint-for label.
const (
	ForService  = "service"
	ForWorkload = "workload"
	ForAll      = "all"
	ForNone     = "none"
)

var waypointForValues = []string{ForService, ForWorkload, ForAll, ForNone}

// invalid says why a Gateway cannot be a waypoint: the reason of its
// Accepted=False condition and a message naming the field.
type invalid struct {
	reason  gatewayv1.GatewayConditionReason
	message string
}

// validate checks what the controller needs of a waypoint Gateway: exactly
// the listener {name: mesh, port: 15008, protocol: HBONE} and, if set, a
// known istio.io/waypoint-for. It returns nil for a valid Gateway.
func validate(gw *gatewayv1.Gateway) *invalid {
	if v, ok := gw.Labels[label.IoIstioWaypointFor.Name]; ok && !slices.Contains(waypointForValues, v) {
		return &invalid{gatewayv1.GatewayReasonInvalid,
			fmt.Sprintf("metadata.labels[%q]: %q, want one of %q", label.IoIstioWaypointFor.Name, v, waypointForValues)}
	}
	want := fmt.Sprintf("a waypoint has exactly one listener {name: %s, port: %d, protocol: %s}", ListenerName, ListenerPort, ListenerProtocol)
	ls := gw.Spec.Listeners
	if len(ls) == 0 {
		return &invalid{gatewayv1.GatewayReasonListenersNotValid, "spec.listeners: empty; " + want}
	}
	for i, l := range ls {
		field := fmt.Sprintf("spec.listeners[%d]", i)
		switch {
		case l.Name != ListenerName:
			return &invalid{gatewayv1.GatewayReasonListenersNotValid, fmt.Sprintf("%s.name: %q; %s", field, l.Name, want)}
		case l.Port != ListenerPort:
			return &invalid{gatewayv1.GatewayReasonListenersNotValid, fmt.Sprintf("%s.port: %d, want %d", field, l.Port, ListenerPort)}
		case l.Protocol != ListenerProtocol:
			return &invalid{gatewayv1.GatewayReasonListenersNotValid, fmt.Sprintf("%s.protocol: %q, want %q", field, l.Protocol, ListenerProtocol)}
		}
	}
	// Listener names are unique (the CRD checks), so there is one.
	return nil
}

// waypointFor is the Gateway's istio.io/waypoint-for, "service" if unset.
func waypointFor(gw *gatewayv1.Gateway) string {
	if v := gw.Labels[label.IoIstioWaypointFor.Name]; v != "" {
		return v
	}
	return ForService
}
