// Package deployer is the waypoint deployment controller of zmeshd
// (Kubernetes mode): for each Gateway of class istio-waypoint it keeps a
// ServiceAccount, a Deployment running the waypoint binary and a ClusterIP
// Service, owned by the Gateway so that garbage collection removes them,
// and reports the Gateway's status (Accepted, Programmed, its address).
// The cluster-wide Sizing shapes every waypoint; a Gateway's
// spec.infrastructure.parametersRef ConfigMap patches its own objects as
// Istio's does (params.go): strategic merge patches under the keys
// deployment, service, horizontalPodAutoscaler, podDisruptionBudget and
// serviceAccount; one that cannot be applied makes the Gateway
// InvalidParameters and leaves its objects as they were.
//
// Deciding what to create is pure (objects.go, validate.go); the Controller
// only watches and applies. Runners with no API server take the same
// objects from Desired, or DesiredWith when they have the ConfigMaps a
// parametersRef may name (the local mesh reads them from its directory). The leader runs Controller.Run; leader election
// is the caller's. It never imports the data planes.
package deployer
