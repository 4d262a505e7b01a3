// Package conformance runs the Gateway API conformance suite's mesh
// profiles (MESH-HTTP, MESH-GRPC) against zmesh on the e2e cluster
// (e2e/cluster): a real API server, network-namespace nodes whose runners
// play the kubelet, the suite's echo Deployments run as the e2e pod app
// (which serves as the echo-basic and echo-advanced images do and carries
// their `client` command), and the suite's mesh namespace bound to a
// waypoint as Istio's own ambient conformance run binds it. `make
// conformance` runs it and writes the report under reports/, in the layout
// implementations submit to the Gateway API project.
package conformance
