// Package waypoint will be zmesh's L7 data plane (HTTP routing, resilience,
// L7 authorization), fed by Envoy v3 xDS. It arrives in a later round; it
// will reuse ztunnel/hbone for its tunnels. It must not import controlplane/.
package waypoint
