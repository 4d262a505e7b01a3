package l7

import (
	"maps"
	"regexp"
	"slices"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// consumerRoutes translates the consumer routes attached to a Service port
// (routes of other namespaces than the Service's, Gateway API's "consumer
// routes"), to be put before the producer's routes of the port. A
// consumer route applies only to the clients of its own namespace, and
// for them the consumer routes of their namespace replace the producer's:
// each client namespace with a consumer route for the port gets a block of
// routes that all match its clients' peer principal (filter state
// io.istio.peer_principal, which only the tunnel's mutual TLS sets, never
// a header), ordered by Gateway API precedence among themselves, and
// closed by a route answering 404 to its clients' other requests, as a
// Service with routes answers a request none of its rules matches. The
// producer's routes after the blocks thus serve the clients of every other
// namespace, and requests without a peer principal. A client namespace
// whose consumer routes name other ports of the Service gets no block for
// this port, and the producer's routes. nil when there is none.
func (b *builder) consumerRoutes(info *serviceInfo, p servicePort, attached []*xRoute) []*routev3.Route {
	byNamespace := map[string][]*xRoute{}
	for _, x := range attached {
		byNamespace[x.ref.Namespace] = append(byNamespace[x.ref.Namespace], x)
	}
	var out []*routev3.Route
	for _, ns := range slices.Sorted(maps.Keys(byNamespace)) {
		routes := b.xRouteRoutes(info, p, byNamespace[ns])
		if routes == nil {
			continue
		}
		for _, r := range routes {
			r.Match.FilterState = append(r.Match.FilterState, clientNamespace(ns))
		}
		out = append(out, routes...)
		out = append(out, &routev3.Route{
			Name:      "no-route|" + ns,
			Match:     &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, FilterState: []*matcherv3.FilterStateMatcher{clientNamespace(ns)}},
			Action:    &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
			Decorator: decorator(info, p),
		})
	}
	return out
}

// clientNamespace matches a peer principal of namespace ns: a SPIFFE ID
// spiffe://<trust domain>/ns/<ns>/sa/<service account>. The trust domain
// is any: the waypoint accepts only peers whose certificates the mesh's
// roots signed.
func clientNamespace(ns string) *matcherv3.FilterStateMatcher {
	re := "spiffe://[^/]+/ns/" + regexp.QuoteMeta(ns) + "/sa/[^/]+"
	return &matcherv3.FilterStateMatcher{
		Key:     peerPrincipalKey,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}},
	}
}
