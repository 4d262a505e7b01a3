// Package route is the waypoint's routing decision: given one immutable
// compiled route table and one request, it picks the virtual host, the
// route, the upstream cluster (weighted picks use a random number the caller
// supplies), and computes the rewritten path and authority, the redirect
// location or the direct response, exactly as Envoy's router does for the
// fields the table supports. RequestHash computes the hash a route's hash
// policies give a request, for the consistent-hash load balancers.
//
// Everything here is pure: no I/O, no goroutines, no clock. A Table is never
// modified after NewTable returns, so any number of goroutines may call
// Decide on it at once. The package knows nothing of Envoy's protos: the
// waypoint/config package validates and translates them into these types.
package route
