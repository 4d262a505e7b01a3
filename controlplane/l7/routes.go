package l7

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// defaultRetryOn and defaultRetriableCodes are istiod's retry policy for a
// route that states none: two retries on connection failures, refused
// streams, gRPC unavailable/cancelled and 503, on other hosts than the
// ones tried.
const (
	defaultRetryOn       = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	defaultRetries       = 2
	defaultHostSelection = 5
	previousHostsName    = "envoy.retry_host_predicates.previous_hosts"
)

// routeEntry is one Envoy route with what orders it among the routes of one
// Service port.
type routeEntry struct {
	route *routev3.Route
	// key orders Gateway API routes (precedence, then age, then name);
	// VirtualService routes keep their order.
	key precedence
}

// routes builds the route configuration of every HTTP or sniffed port of
// every bound Service. A Service with HTTPRoutes or GRPCRoutes is routed by
// them; else by its VirtualServices; else every request goes to the
// Service's own cluster. Consumer routes come first, each client
// namespace's only for its clients (consumerRoutes).
func (b *builder) routes() {
	vs := b.virtualServices()
	xr, consumers := b.xRoutes()
	for _, info := range b.bound {
		if len(serviceVIPs(info.svc)) == 0 {
			continue
		}
		attached := xr[info.host]
		services := vs[info.host]
		if len(attached) > 0 && len(services) > 0 {
			b.conflict(info, services, attached)
			services = nil
		}
		for _, p := range info.ports {
			if p.protocol != "http" {
				continue
			}
			var routes []*routev3.Route
			switch {
			case len(attached) > 0:
				routes = b.xRouteRoutes(info, p, attached)
			case len(services) > 0:
				routes = b.vsRoutes(info, p, services)
			}
			if routes == nil {
				routes = []*routev3.Route{b.defaultRoute(info, p)}
			}
			routes = append(b.consumerRoutes(info, p, consumers[info.host]), routes...)
			name := clusterName(p.port, "http", "", info.host)
			b.out.Routes = append(b.out.Routes, &routev3.RouteConfiguration{
				Name: name,
				VirtualHosts: []*routev3.VirtualHost{{
					Name:    fmt.Sprintf("%s:%d", info.host, p.port),
					Domains: []string{"*"},
					// As istiod: upstream requests carry x-envoy-attempt-count.
					IncludeRequestAttemptCount: true,
					Routes:                     routes,
				}},
				ValidateClusters: wrapperspb.Bool(false),
			})
		}
	}
}

// conflict reports a host configured both by VirtualServices and by
// Gateway API routes, on both sides: the Gateway API routes win.
func (b *builder) conflict(info *serviceInfo, services []*vsEntry, attached []*xRoute) {
	var vsNames, routeNames []string
	for _, e := range services {
		vsNames = append(vsNames, e.ref.String())
	}
	for _, r := range attached {
		routeNames = append(routeNames, r.ref.String())
	}
	for _, e := range services {
		b.report(e.ref, ReasonOverridden, "spec.hosts", fmt.Sprintf("%s is also routed by %s; the Gateway API route wins and this VirtualService is ignored for it",
			info.host, strings.Join(routeNames, ", ")))
	}
	for _, r := range attached {
		b.report(r.ref, ReasonConflicted, "spec.parentRefs", fmt.Sprintf("%s is also routed by %s, which is ignored for it: this route wins",
			info.host, strings.Join(vsNames, ", ")))
	}
}

// defaultRoute sends every request to the Service port's own cluster, with
// istiod's default retry policy and no timeout.
func (b *builder) defaultRoute(info *serviceInfo, p servicePort) *routev3.Route {
	cluster := clusterName(p.port, "http", "", info.host)
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
		Timeout:          durationpb.New(0),
	}
	hash := b.hashPolicy([]destination{{info: info, port: p}})
	action.HashPolicy = hash
	action.RetryPolicy = defaultRetryPolicy(hash != nil)
	return &routev3.Route{
		Name:      "default",
		Match:     &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action:    &routev3.Route_Route{Route: action},
		Decorator: decorator(info, p),
	}
}

func decorator(info *serviceInfo, p servicePort) *routev3.Decorator {
	return &routev3.Decorator{Operation: fmt.Sprintf("%s:%d/*", info.host, p.port)}
}

// defaultRetryPolicy is istiod's default. With a hash policy, retries stay
// on the hashed host (istiod drops the previous-hosts predicate then).
func defaultRetryPolicy(hashed bool) *routev3.RetryPolicy {
	rp := &routev3.RetryPolicy{
		RetryOn:                       defaultRetryOn,
		NumRetries:                    wrapperspb.UInt32(defaultRetries),
		RetriableStatusCodes:          []uint32{http.StatusServiceUnavailable},
		HostSelectionRetryMaxAttempts: defaultHostSelection,
	}
	if !hashed {
		rp.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       previousHostsName,
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
		}}
	}
	return rp
}

// destination is one resolved destination of a route: a Service port and
// an optional subset.
type destination struct {
	info   *serviceInfo
	port   servicePort
	subset string
	weight uint32
	// headers are this destination's own header mutations.
	reqAdd, respAdd       []*corev3.HeaderValueOption
	reqRemove, respRemove []string
}

func (d destination) cluster() string {
	return clusterName(d.port.port, "http", d.subset, d.info.host)
}

// serviceByHost returns the Service (or ServiceEntry host) whose host is
// host, building its clusters, or nil.
func (b *builder) serviceByHost(host string) *serviceInfo {
	if info, ok := b.services[host]; ok {
		return info
	}
	for _, svc := range b.snap.Services {
		if svc.Name+"."+svc.Namespace+".svc."+b.opts.Mesh.DomainSuffix == host {
			return b.service(svc)
		}
	}
	return b.serviceEntryByHost(host)
}

// resolveDestination finds the cluster of host (already complete), port
// (0: unstated) and subset. from is the port the request came in on, used
// when the destination is the Service itself and no port is given.
func (b *builder) resolveDestination(ref ObjectRef, path, host string, port uint32, subset string, self *serviceInfo, from servicePort) (destination, bool) {
	info := b.serviceByHost(host)
	if info == nil {
		b.report(ref, ReasonBackendNotFound, path, fmt.Sprintf("%s is not a Service the waypoint can reach; it gets no traffic", host))
		return destination{}, false
	}
	var p servicePort
	found := false
	switch {
	case port != 0:
		for _, q := range info.ports {
			if q.port == int32(port) {
				p, found = q, true
			}
		}
	case info == self:
		p, found = from, true
	case len(info.ports) == 1:
		p, found = info.ports[0], true
	default:
		for _, q := range info.ports {
			if q.port == from.port {
				p, found = q, true
			}
		}
	}
	if !found {
		b.report(ref, ReasonBackendNotFound, path, fmt.Sprintf("%s has no port %d the waypoint serves; it gets no traffic", host, cmp.Or(port, uint32(from.port))))
		return destination{}, false
	}
	if p.protocol != "http" {
		b.report(ref, ReasonBackendNotFound, path, fmt.Sprintf("port %d of %s is TCP; HTTP requests cannot be sent to it", p.port, host))
		return destination{}, false
	}
	if subset != "" {
		ok := false
		if info.dr != nil {
			for _, s := range info.dr.Spec.Subsets {
				ok = ok || (s != nil && s.Name == subset)
			}
		}
		if !ok {
			b.report(ref, ReasonBackendNotFound, path, fmt.Sprintf("subset %q of %s is defined by no DestinationRule; it gets no traffic", subset, host))
			return destination{}, false
		}
	}
	return destination{info: info, port: p, subset: subset}, true
}

// forward sets the route's action to the destinations: one cluster, or
// weighted clusters. Each destination's header mutations go with it (onto
// the route when it is the only one).
func forward(r *routev3.Route, action *routev3.RouteAction, dests []destination) {
	if len(dests) == 1 {
		d := dests[0]
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: d.cluster()}
		r.RequestHeadersToAdd = append(r.RequestHeadersToAdd, d.reqAdd...)
		r.RequestHeadersToRemove = append(r.RequestHeadersToRemove, d.reqRemove...)
		r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, d.respAdd...)
		r.ResponseHeadersToRemove = append(r.ResponseHeadersToRemove, d.respRemove...)
	} else {
		wc := &routev3.WeightedCluster{}
		for _, d := range dests {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{
				Name:                    d.cluster(),
				Weight:                  wrapperspb.UInt32(d.weight),
				RequestHeadersToAdd:     d.reqAdd,
				RequestHeadersToRemove:  d.reqRemove,
				ResponseHeadersToAdd:    d.respAdd,
				ResponseHeadersToRemove: d.respRemove,
			})
		}
		action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	r.Action = &routev3.Route_Route{Route: action}
}

// internalError is Gateway API's answer for a rule whose backends are all
// invalid or whose filter cannot be applied.
func internalError() *routev3.Route_DirectResponse {
	return &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: http.StatusInternalServerError}}
}

// headerOption is one header to set (overwrite) or add (append).
func headerOption(name, value string, overwrite bool) *corev3.HeaderValueOption {
	action := corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
	if overwrite {
		action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	}
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, Value: value}, AppendAction: action}
}

// checkHeader tells why a header cannot be set, added or removed by the
// waypoint, or "" when it can: pseudo-headers and host are not headers to
// mutate (an authority is rewritten instead), and values are literal (no
// Envoy %FORMATTER%).
func checkHeader(name, value string) string {
	switch {
	case !httpguts.ValidHeaderFieldName(name):
		return fmt.Sprintf("%q is not a header name that can be modified", name)
	case !httpguts.ValidHeaderFieldValue(value):
		return fmt.Sprintf("invalid value for header %q", name)
	case strings.Contains(value, "%"):
		return fmt.Sprintf("value of %q uses %%: Envoy's %%FORMATTER%% substitutions are not supported", name)
	}
	return ""
}

func isAuthority(name string) bool {
	n := strings.ToLower(name)
	return n == "host" || n == ":authority"
}

// stringMatcher is an Envoy StringMatcher; regexes are checked here, since
// one the waypoint cannot compile would make it refuse the whole route
// configuration.
func regexMatcher(re string) (*matcherv3.StringMatcher, error) {
	if _, err := regexp.Compile(re); err != nil {
		return nil, fmt.Errorf("invalid RE2 regex %q: %v", re, err)
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}, nil
}

func exactMatcher(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

// percentOf is a share in [0, 100] as parts per million, as istiod writes
// fractional percentages.
func percentOf(v float64) *typev3.FractionalPercent {
	v = min(max(v, 0), 100)
	return &typev3.FractionalPercent{Numerator: uint32(v * 10_000), Denominator: typev3.FractionalPercent_MILLION}
}

func mirrorPolicy(cluster string, pct *typev3.FractionalPercent) *routev3.RouteAction_RequestMirrorPolicy {
	return &routev3.RouteAction_RequestMirrorPolicy{
		Cluster:         cluster,
		RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: pct},
		TraceSampled:    wrapperspb.Bool(false),
	}
}

// hashPolicy is the consistent-hash key of the destinations' DestinationRule
// policy, when they all hash on the same key; nil otherwise.
func (b *builder) hashPolicy(dests []destination) []*routev3.RouteAction_HashPolicy {
	var out []*routev3.RouteAction_HashPolicy
	for i, d := range dests {
		hp := b.destinationHash(d)
		if i > 0 && !slices.EqualFunc(hp, out, func(x, y *routev3.RouteAction_HashPolicy) bool { return proto.Equal(x, y) }) {
			return nil
		}
		out = hp
	}
	return out
}

func (b *builder) destinationHash(d destination) []*routev3.RouteAction_HashPolicy {
	dr := d.info.dr
	if dr == nil {
		return nil
	}
	var subsetPolicy *networking.TrafficPolicy
	idx := 0
	for j, s := range dr.Spec.Subsets {
		if s != nil && s.Name == d.subset && d.subset != "" {
			subsetPolicy, idx = s.TrafficPolicy, j
		}
	}
	pol := mergePolicy(dr.Spec.TrafficPolicy, subsetPolicy, idx, uint32(d.port.port))
	ch := pol.lb.GetConsistentHash()
	if ch == nil {
		return nil
	}
	path := pol.lbPath + ".consistentHash"
	bad := func(field, why string) []*routev3.RouteAction_HashPolicy {
		b.problem(drRef(dr), path+"."+field, why+"; requests are spread over the ring without a key")
		return nil
	}
	var hp *routev3.RouteAction_HashPolicy
	switch k := ch.HashKey.(type) {
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
		if why := checkMatchName(strings.ToLower(k.HttpHeaderName), true); why != "" {
			return bad("httpHeaderName", why)
		}
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: strings.ToLower(k.HttpHeaderName)}}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
		if !isToken(k.HttpCookie.GetName()) {
			return bad("httpCookie.name", fmt.Sprintf("%q is not a cookie name", k.HttpCookie.GetName()))
		}
		if strings.ContainsFunc(k.HttpCookie.GetPath(), func(r rune) bool { return r < 0x20 || r == 0x7f || r == ';' || r > 0x7e }) {
			return bad("httpCookie.path", fmt.Sprintf("%q cannot be a cookie path", k.HttpCookie.GetPath()))
		}
		c := &routev3.RouteAction_HashPolicy_Cookie{Name: k.HttpCookie.GetName(), Path: k.HttpCookie.GetPath()}
		if t := k.HttpCookie.GetTtl(); t != nil {
			c.Ttl = durationpb.New(t.AsDuration())
		}
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: c}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
		if !k.UseSourceIp {
			return nil
		}
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
		if k.HttpQueryParameterName == "" {
			return bad("httpQueryParameterName", "empty")
		}
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: k.HttpQueryParameterName}}}
	default:
		return nil
	}
	return []*routev3.RouteAction_HashPolicy{hp}
}

// durationOf converts a protobuf duration that is valid and not negative.
func durationOf(d interface{ AsDuration() time.Duration }) *durationpb.Duration {
	return durationpb.New(max(d.AsDuration(), 0))
}
