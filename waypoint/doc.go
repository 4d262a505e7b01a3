// Package waypoint is zmesh's L7 data plane (HTTP routing, resilience, L7
// authorization), fed by Envoy v3 xDS. Its tunnels are internal/hbone's. It
// must not import controlplane/ or ztunnel/.
package waypoint
