// Package e2e holds zmesh's end-to-end tests and the helpers they share
// with the demo and the benchmarks: network-namespace topologies (netenv)
// and, as the mesh grows, the node runner and the Kubernetes test harness.
package e2e
