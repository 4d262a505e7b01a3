// Package workload holds the workload discovery wire types (istio.workload),
// field-compatible with Istio's ambient API: what zmeshd sends and ztunnel
// reads. The L4 authorization types live in the security subpackage.
package workload
