// Package upstream holds the waypoint's compiled model of where requests
// go: clusters (load-balancing policy, outlier detection, connection
// limits, upstream protocol) and their endpoints (address, locality,
// priority, weight, health, and the SPIFFE identity the waypoint must see
// when it dials the endpoint over HBONE), and the live parts that act on
// them as Envoy would:
//
//   - Balancer picks a request's endpoint (Pick; Host.Begin/End around
//     the request).
//   - Detector is a cluster's outlier detection: the proxy reports each
//     attempt's outcome on its host (Report with Connected, ConnectFailed,
//     Reset, TimedOut or Status(code)), and hosts that keep failing are
//     ejected from the Balancer for a time that grows with each ejection.
//   - Admission is a cluster's circuit breakers: the proxy takes a slot
//     before each attempt (TryRequest), wait for a connection
//     (TryPending), dial (TryConnection) and retry (TryRetry), and gives it
//     back with the matching Done; a refusal is answered with Overflow.
//   - LocalReply values are Envoy's upstream local replies, word for word.
//
// Per snapshot the proxy builds Balancers, then Detectors from them, and
// Admissions; each carries its live state (requests in flight, ejections,
// failure counts, circuit-breaker counts, statistics) over from the
// previous snapshot for the endpoints and clusters that remain.
//
// Clusters and assignments are built by waypoint/config from Envoy
// resources and are never modified afterwards, so any number of goroutines
// may read them. The live state is behind atomics; Pick, Report and the
// admissions take no lock in the common case and do not allocate. The
// package does no I/O and starts no goroutines: outlier detection's
// interval ticks are computed from the clock when they matter, so nothing
// needs stopping when a snapshot is replaced. It must not import
// controlplane/ or ztunnel/.
package upstream
