// Package deployer is the waypoint deployment controller of zmeshd
// (Kubernetes mode): for each Gateway of class istio-waypoint it keeps a
// ServiceAccount, a Deployment running the waypoint binary and a ClusterIP
// Service, owned by the Gateway so that garbage collection removes them,
// and reports the Gateway's status (Accepted, Programmed, its address).
//
// Deciding what to create is pure (objects.go, validate.go); the Controller
// only watches and applies. The leader runs Controller.Run; leader election
// is the caller's. It never imports the data planes.
package deployer
