// Package l7 builds the Envoy v3 resources one waypoint serves, from the
// Services, ServiceEntries and pods bound to it (istio.io/use-waypoint on
// the object or its namespace, accepted by the waypoint's
// istio.io/waypoint-for) and the routing objects for them.
//
// Listener. One listener, main_internal, with a filter chain per bound
// Service port, matched on the Service's VIPs and the port, named as
// istiod names a waypoint's chains: inbound-vip|<port>|http|<host> runs an
// HTTP connection manager whose routes come from RDS under the same name;
// inbound-vip|<port>|tcp|<host> a TCP proxy to the port's TCP cluster. The
// protocol is the port's appProtocol, else its name (http, http2, grpc,
// tcp, … or that prefix and "-"); a port that says neither is sniffed: both
// chains, the HTTP one matching the HTTP inspector's protocols. A chain
// whose routes inject faults gets an empty fault filter before the router.
//
// Routes. One route configuration per HTTP or sniffed port, with one
// virtual host for any authority (the tunnel's destination already chose
// the Service). Its routes come from, in this order of preference:
//
//   - HTTPRoutes and GRPCRoutes attached to the Service (a parentRef of
//     kind Service, group "", optionally a port or a sectionName naming a
//     port), else those attached to the waypoint Gateway whose hostnames
//     name the Service (none: every bound Service). Their matches are
//     ordered by Gateway API precedence: exact path, longest prefix (path
//     segments, a trailing "/" ignored), regex, then a method match, more
//     header matches, more query matches, then the oldest route and its
//     name. A rule with an unsupported filter, or no valid backend with a
//     weight above 0, answers 500. GRPCRoute method matches are :path
//     matches on /service/method. The hostnames of a route attached to a
//     Service are not used (the parent names the Service).
//   - VirtualServices naming the Service's host (short names completed in
//     the VirtualService's namespace, complete names, wildcards), exported
//     to the waypoint's namespace and not bound to gateways only, oldest
//     first: their http rules in order, the first match wins, and a
//     request no rule matches gets 404 (istiod's waypoint does the same).
//     A rule for another port (match.port) is skipped.
//   - Otherwise one default route to the Service's own cluster.
//
// Consumer routes come before all of these: HTTPRoutes and GRPCRoutes of
// another namespace than the Service's attached to it, which Gateway API
// applies to their own namespace's clients only, replacing the producer's
// routes (the above) for them. Each client namespace with a consumer route
// for the port gets a block: its routes, by the same precedence, each
// matching the client's peer principal (filter_state
// io.istio.peer_principal, the SPIFFE ID the HBONE tunnel's mutual TLS
// proved, against spiffe://[^/]+/ns/<namespace>/sa/[^/]+), then a route
// answering 404 to that namespace's other requests (as a Service with
// routes answers a request none matches; Envoy would answer "no route",
// here it is a direct response named no-route|<namespace>). Every other
// client, and a request without a peer principal, falls through to the
// producer's routes. A consumer route's backendRef to its parent Service
// needs no ReferenceGrant; any other backend in another namespace than the
// route's still does. A consumer route does not override the Service's
// VirtualServices: they keep serving the other clients.
//
// Gateway API routes win over VirtualServices for the same host; both are
// told (Conflicted on the route, Overridden on the VirtualService). Every
// route has istiod's defaults: no timeout, and its retry policy (2 retries
// on connect-failure, refused-stream, unavailable, cancelled and 503, on
// other hosts) unless the object says otherwise. A DestinationRule's
// consistentHash key is the hash_policy of the routes to its host (all
// destinations of a route must agree). VirtualService faults and CORS
// policies are per-route filter configuration, as istiod writes them.
//
// Authorization. AuthorizationPolicies attached with targetRefs (or
// targetRef) to the waypoint's Gateway, to its GatewayClass from the root
// namespace, or to a bound Service are Envoy RBAC filters at the head of
// the HTTP chains they apply to, as istiod writes them for a waypoint: one
// filter per action present, AUDIT (a LOG engine), then DENY, then ALLOW;
// rule N of a policy is the RBAC policy ns[<ns>]-policy[<name>]-rule[N],
// which names the deciding policy in the access log; dry-run policies are
// shadow rules. A CUSTOM policy cannot call its provider, so the requests
// its rules match are denied. What the waypoint cannot read fails closed:
// left out of an ALLOW policy, ignored (so denying more) in a DENY rule.
// The TCP chains (TCP ports, and the TCP chain of a sniffed port) get the
// same policies as envoy.filters.network.rbac filters before the
// tcp_proxy, in the same order, which check a connection once: there an
// HTTP attribute (hosts, methods, paths, requestPrincipals, request.*
// conditions) cannot be read, so, as istiod writes it for TCP, an ALLOW
// rule using one is left out and a DENY or AUDIT rule ignores it (a DENY
// rule of HTTP attributes only denies every connection).
//
// Policies without targetRefs are ztunnel's, except those on the waypoint
// as a workload, which ztunnel cannot enforce since it does not capture
// the waypoint's pods: a selector matching the labels the deployer gives
// them (model.WaypointLabels) or those of a running waypoint pod, in the
// waypoint's namespace or the root namespace, or no selector in either.
// They are network RBAC filters (AUDIT, DENY, ALLOW) at the head of every
// filter chain, HTTP and TCP, before the chain's own filters: each tunnel
// is checked once with the peer's identity and address and the
// destination port, and what a tunnel does not have fails closed as in
// the ztunnel translation (an ALLOW rule with an HTTP attribute is left
// out; a DENY or AUDIT rule ignores it), reported on the policy. Being
// separate filters, each scope's ALLOW policies must allow on their own.
//
// Clusters. One cluster per Service port and DestinationRule subset, named
// inbound-vip|<port>|<protocol>[/<subset>]|<host>, for every bound Service
// and every Service a route sends to, with its ClusterLoadAssignment: the
// ready, mesh-enrolled pods the Service selects, each with its SPIFFE
// identity and labels in metadata, which the waypoint requires before it
// dials a pod. DestinationRule traffic policy (load balancing, outlier
// detection, connection pool) is merged as Istio merges it: a subset's
// groups replace the top-level ones, and port-level settings replace both
// for their port. Each endpoint also carries istiod's "istio" metadata
// (workload, namespace, canonical service and revision, cluster) and its
// app and version labels, which the waypoint's telemetry reads.
//
// Locality. A pod's locality is its istio-locality label, else its node's
// topology labels. Given the waypoint's locality (Options.Locality), each
// assignment is prioritised and weighted relative to it as istiod does for
// a proxy (locality.go): localityLbSetting distribute, failover and
// failoverPriority, failover only with outlier detection. Without it the
// endpoints are grouped by locality with no priorities.
//
// Problems. Nothing is dropped silently: a field the waypoint cannot honour
// is a Problem on its object with the field path and a Reason. Where
// ignoring a condition would widen what an object matches (a match on the
// client's labels), the part it is in is left out instead. Routing objects
// in force are reported too (ReasonAccepted); Unbound reports those that
// reach no waypoint. Everything emitted is what waypoint/config compiles:
// regexes and header names are checked here, so one bad object cannot make
// the waypoint refuse a whole route configuration.
//
// ServiceEntries bound to the waypoint (istio.io/use-waypoint on the entry
// or its namespace, exported to the waypoint's namespace) are served like
// Services, one per host, on their addresses: see serviceentry.go for
// their endpoints, in and outside the mesh. HTTPRoutes attach to them with
// a parentRef of kind ServiceEntry, group networking.istio.io, and
// AuthorizationPolicies with a targetRef of that kind. A destination
// (VIP:port) is served by one chain: the first to claim it, Services
// before ServiceEntries, keeps it, and later claimers are reported.
//
// A waypoint for workloads (istio.io/waypoint-for workload or all) also
// has a chain per declared port of every pod bound to it, on the pod's
// address, sending everything to that pod: see workload.go. Those chains
// get the JWT and RBAC filters of the RequestAuthentications and
// AuthorizationPolicies attached to the whole waypoint (its Gateway, its
// GatewayClass), so dialling a pod's address is checked as dialling a
// Service's is by the waypoint-wide policies.
//
// The package is pure: a snapshot in, resources out.
package l7
