// Package controlplane will be zmeshd's core: Kubernetes and YAML-directory
// config sources, pure translation to workload/authorization resources, the
// delta xDS server, and wiring of identity's certificate service. It never
// imports the data planes (ztunnel/, waypoint/, cni/).
package controlplane
