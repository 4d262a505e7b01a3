// Package upstream holds the waypoint's compiled model of where requests
// go: clusters (load-balancing policy, outlier detection, connection
// limits, upstream protocol) and their endpoints (address, locality,
// priority, weight, health, and the SPIFFE identity the waypoint must see
// when it dials the endpoint over HBONE).
//
// Values here are built by waypoint/config from Envoy resources and are
// never modified afterwards, so any number of goroutines may read them.
// The package is pure: no I/O, no goroutines. It must not import
// controlplane/ or ztunnel/.
package upstream
