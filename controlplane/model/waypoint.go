package model

import gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

// Istio's waypoint vocabulary: the GatewayClass of waypoints, and the labels
// that bind objects to them.
const (
	// WaypointClass is the GatewayClass of waypoints.
	WaypointClass = "istio-waypoint"
	// LabelUseWaypoint on a Namespace, Service, ServiceEntry or Pod names
	// the waypoint Gateway its traffic goes through ("none" opts out).
	LabelUseWaypoint = "istio.io/use-waypoint"
	// LabelUseWaypointNamespace names that Gateway's namespace when it is
	// not the object's own.
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// LabelWaypointFor on a waypoint Gateway says which traffic it takes:
	// service (the default), workload, all or none.
	LabelWaypointFor = "istio.io/waypoint-for"
	// LabelGatewayName marks the pods and Service of a Gateway's
	// deployment.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
)

// UseWaypoint reads an object's use-waypoint labels; namespace is the
// object's own. labelled says the label is set at all (an object's own
// label, even "none", wins over its namespace's); ns and name are the
// waypoint Gateway it names, both empty for "none".
func UseWaypoint(labels map[string]string, namespace string) (ns, name string, labelled bool) {
	name, labelled = labels[LabelUseWaypoint]
	if !labelled || name == "none" || name == "" {
		return "", "", labelled
	}
	ns = namespace
	if v := labels[LabelUseWaypointNamespace]; v != "" {
		ns = v
	}
	return ns, name, true
}

// WaypointFor reads a waypoint's istio.io/waypoint-for: which kinds of
// traffic it takes. An unset or unknown value is "service", as in Istio.
func WaypointFor(gw *gatewayv1.Gateway) (value string, workloads, services bool) {
	switch value = gw.Labels[LabelWaypointFor]; value {
	case "workload":
		return value, true, false
	case "all":
		return value, true, true
	case "none":
		return value, false, false
	default:
		return "service", false, true
	}
}
