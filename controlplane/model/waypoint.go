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

// WaypointManagedValue is the value of gateway.istio.io/managed on the
// objects the waypoint deployer owns, as Istio marks its waypoints.
const WaypointManagedValue = "istio.io-mesh-controller"

// Labels the waypoint deployer sets besides LabelGatewayName and
// LabelWaypointFor.
const (
	labelGatewayManaged   = "gateway.istio.io/managed"
	labelGatewayClassName = "gateway.networking.k8s.io/gateway-class-name"
	labelDataplaneMode    = "istio.io/dataplane-mode"
)

// WaypointLabels are the labels the waypoint deployer puts on the objects
// of a waypoint Gateway (spec.infrastructure.labels, then its own), and
// podLabels those of the Deployment's pod template. The deployer builds
// its objects from them and the waypoint's authorization matches
// selector policies against podLabels, so the two cannot disagree.
func WaypointLabels(gw *gatewayv1.Gateway) (labels, podLabels map[string]string) {
	labels = map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			labels[string(k)] = string(v)
		}
	}
	labels[LabelGatewayName] = gw.Name
	labels[labelGatewayManaged] = WaypointManagedValue
	labels[labelGatewayClassName] = WaypointClass
	forValue := gw.Labels[LabelWaypointFor]
	if forValue == "" {
		forValue = "service"
	}
	labels[LabelWaypointFor] = forValue
	podLabels = make(map[string]string, len(labels)+1)
	for k, v := range labels {
		podLabels[k] = v
	}
	// A waypoint terminates HBONE itself: ztunnel must not capture it.
	podLabels[labelDataplaneMode] = "none"
	return labels, podLabels
}
