package l7

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// xRoute is an HTTPRoute or GRPCRoute attached to a bound Service, directly
// (a parentRef to the Service) or through the waypoint Gateway.
type xRoute struct {
	ref     ObjectRef
	created metav1.Time
	http    *gatewayv1.HTTPRoute
	grpc    *gatewayv1.GRPCRoute
	// port and section, when set, limit the attachment to one Service
	// port (parentRef port, or sectionName naming the port).
	port    int32
	section string
	// viaGateway: attached to the waypoint Gateway, not to the Service.
	viaGateway bool
	// consumerOf is the host of the parent Service of a consumer route (a
	// route of another namespace than the Service's), "" for a producer
	// route. A consumer route applies only to requests of clients of its
	// own namespace, ref.Namespace.
	consumerOf string
}

func (x *xRoute) appliesTo(p servicePort) bool {
	return (x.port == 0 || x.port == p.port) && (x.section == "" || x.section == p.name)
}

// xRoutes returns, per bound host, the Gateway API routes attached to it:
// the producers' (a route attached to the Service itself, from the
// Service's namespace, replaces routes attached through the waypoint
// Gateway for that Service) and the consumers' (routes of other
// namespaces attached to the Service, each for its own namespace's
// clients).
func (b *builder) xRoutes() (producer, consumer map[string][]*xRoute) {
	type parented struct {
		x       xRoute
		parents []gatewayv1.ParentReference
		names   []gatewayv1.Hostname
	}
	var all []parented
	for _, r := range b.snap.HTTPRoutes {
		all = append(all, parented{xRoute{ref: ObjectRef{"HTTPRoute", r.Namespace, r.Name}, created: r.CreationTimestamp, http: r}, r.Spec.ParentRefs, r.Spec.Hostnames})
	}
	for _, r := range b.snap.GRPCRoutes {
		all = append(all, parented{xRoute{ref: ObjectRef{"GRPCRoute", r.Namespace, r.Name}, created: r.CreationTimestamp, grpc: r}, r.Spec.ParentRefs, r.Spec.Hostnames})
	}
	slices.SortStableFunc(all, func(x, y parented) int {
		return cmp.Or(x.x.created.Time.Compare(y.x.created.Time), cmp.Compare(x.x.ref.Namespace, y.x.ref.Namespace), cmp.Compare(x.x.ref.Name, y.x.ref.Name))
	})
	direct, viaGateway, consumer := map[string][]*xRoute{}, map[string][]*xRoute{}, map[string][]*xRoute{}
	for _, r := range all {
		for i, pr := range r.parents {
			path := fmt.Sprintf("spec.parentRefs[%d]", i)
			group, kind := "gateway.networking.k8s.io", "Gateway"
			if pr.Group != nil {
				group = string(*pr.Group)
			}
			if pr.Kind != nil {
				kind = string(*pr.Kind)
			}
			ns := r.x.ref.Namespace
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			switch {
			case (group == "" || group == "core") && kind == "Service":
				host := string(pr.Name) + "." + ns + ".svc." + b.opts.Mesh.DomainSuffix
				if b.boundHost(host) == nil {
					continue
				}
				x := r.x
				if pr.Port != nil {
					x.port = int32(*pr.Port)
				}
				if pr.SectionName != nil {
					x.section = string(*pr.SectionName)
				}
				if ns != r.x.ref.Namespace {
					x.consumerOf = host
					consumer[host] = appendRoute(consumer[host], &x)
					continue
				}
				direct[host] = appendRoute(direct[host], &x)
			case group == "networking.istio.io" && kind == "ServiceEntry":
				b.attachToServiceEntry(r.x, pr, ns, path, direct)
			case group == "gateway.networking.k8s.io" && kind == "Gateway" && string(pr.Name) == b.gw.Name && ns == b.gw.Namespace:
				for _, info := range b.bound {
					if !hostnamesMatch(r.names, info) {
						continue
					}
					x := r.x
					x.viaGateway = true
					if pr.Port != nil {
						x.port = int32(*pr.Port)
					}
					viaGateway[info.host] = appendRoute(viaGateway[info.host], &x)
				}
			}
		}
	}
	for host, rs := range viaGateway {
		if _, ok := direct[host]; !ok {
			direct[host] = rs
		}
	}
	return direct, consumer
}

// appendRoute adds x unless the same route is already attached (two
// parentRefs naming one Service): the route then applies to the union of
// their ports.
func appendRoute(list []*xRoute, x *xRoute) []*xRoute {
	for _, y := range list {
		if y.ref == x.ref {
			if y.port != x.port || y.section != x.section {
				y.port, y.section = 0, ""
			}
			return list
		}
	}
	return append(list, x)
}

// boundHost returns the bound Service of host, or nil.
func (b *builder) boundHost(host string) *serviceInfo {
	for _, info := range b.bound {
		if info.host == host {
			return info
		}
	}
	return nil
}

// hostnamesMatch applies a Gateway-attached route's hostnames to a bound
// Service: none is every Service; else the Service's name, name.namespace
// or full host, or a wildcard suffix of the full host.
func hostnamesMatch(names []gatewayv1.Hostname, info *serviceInfo) bool {
	if len(names) == 0 {
		return true
	}
	for _, n := range names {
		h := strings.ToLower(string(n))
		switch {
		case h == info.host:
			return true
		case info.se == nil && (h == info.svc.Name || h == info.svc.Name+"."+info.svc.Namespace):
			return true
		case strings.HasPrefix(h, "*.") && strings.HasSuffix(info.host, h[1:]):
			return true
		}
	}
	return false
}

// precedence orders Gateway API matches: exact path, then prefix, then
// regex; a longer path first; a method match first; more header matches
// first; more query matches first. Ties keep the routes' order (oldest,
// then by namespace/name, then rule and match index).
type precedence struct {
	pathRank, pathLen, headers, query int
	method                            bool
}

func (x precedence) compare(y precedence) int {
	b2i := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	return cmp.Or(cmp.Compare(y.pathRank, x.pathRank), cmp.Compare(y.pathLen, x.pathLen), cmp.Compare(b2i(y.method), b2i(x.method)),
		cmp.Compare(y.headers, x.headers), cmp.Compare(y.query, x.query))
}

const (
	rankRegex = iota + 1
	rankPrefix
	rankExact
)

// xRouteRoutes translates the Gateway API routes attached to a Service
// port, ordered by Gateway API precedence. nil when none applies to the
// port.
func (b *builder) xRouteRoutes(info *serviceInfo, p servicePort, attached []*xRoute) []*routev3.Route {
	var entries []routeEntry
	for _, x := range attached {
		if !x.appliesTo(p) {
			continue
		}
		n := len(entries)
		if x.http != nil {
			for ri, rule := range x.http.Spec.Rules {
				entries = append(entries, b.httpRule(x, ri, &rule, info, p)...)
			}
		} else {
			for ri, rule := range x.grpc.Spec.Rules {
				entries = append(entries, b.grpcRule(x, ri, &rule, info, p)...)
			}
		}
		if len(entries) > n {
			b.accepted[x.ref] = true
		}
	}
	if len(entries) == 0 {
		return nil
	}
	slices.SortStableFunc(entries, func(x, y routeEntry) int { return x.key.compare(y.key) })
	out := make([]*routev3.Route, len(entries))
	for i, e := range entries {
		out[i] = e.route
	}
	return out
}

// ruleAction is what a rule does, before its matches are known (a prefix
// rewrite depends on the match).
type ruleAction struct {
	failed   bool // an unsupported filter or no valid backend: 500
	redirect *gatewayv1.HTTPRequestRedirectFilter
	rewrite  *gatewayv1.HTTPURLRewriteFilter
	mirrors  []*routev3.RouteAction_RequestMirrorPolicy
	dests    []destination
	timeout  *durationpb.Duration
	retry    *routev3.RetryPolicy
	hash     []*routev3.RouteAction_HashPolicy
	// route carries the rule's header mutations.
	route *routev3.Route
}

// headerFilter applies a RequestHeaderModifier or ResponseHeaderModifier.
// A request "set" of Host is an authority rewrite, returned.
func (b *builder) headerFilter(ref ObjectRef, path string, f *gatewayv1.HTTPHeaderFilter, request bool) (add []*corev3.HeaderValueOption, remove []string, host string) {
	if f == nil {
		b.problem(ref, path, "required by the filter type; ignored")
		return nil, nil, ""
	}
	one := func(kind string, i int, h gatewayv1.HTTPHeader, overwrite bool) {
		name := strings.ToLower(string(h.Name))
		if request && overwrite && isAuthority(name) {
			host = h.Value
			return
		}
		if why := checkHeader(name, h.Value); why != "" || isAuthority(name) {
			b.problem(ref, fmt.Sprintf("%s.%s[%d]", path, kind, i), cmp.Or(why, "host cannot be modified here")+"; ignored")
			return
		}
		add = append(add, headerOption(name, h.Value, overwrite))
	}
	for i, h := range f.Set {
		one("set", i, h, true)
	}
	for i, h := range f.Add {
		one("add", i, h, false)
	}
	for i, n := range f.Remove {
		name := strings.ToLower(n)
		if why := checkHeader(name, ""); why != "" || isAuthority(name) {
			b.problem(ref, fmt.Sprintf("%s.remove[%d]", path, i), fmt.Sprintf("%q cannot be removed; ignored", n))
			continue
		}
		remove = append(remove, name)
	}
	return add, remove, host
}

// backend resolves a backendRef (or a mirror's): a Service of the route's
// namespace with a port, or a consumer route's parent Service, which
// Gateway API lets a consumer route send to without a ReferenceGrant.
func (b *builder) backend(x *xRoute, path string, ref gatewayv1.BackendObjectReference, info *serviceInfo, p servicePort) (destination, bool) {
	if (ref.Group != nil && *ref.Group != "" && *ref.Group != "core") || (ref.Kind != nil && *ref.Kind != "Service") {
		b.report(x.ref, ReasonBackendNotFound, path, "only Services are supported as backends; this backend gets no traffic")
		return destination{}, false
	}
	ns := x.ref.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	host := string(ref.Name) + "." + ns + ".svc." + b.opts.Mesh.DomainSuffix
	if ns != x.ref.Namespace && host != x.consumerOf {
		b.report(x.ref, ReasonBackendNotFound, path+".namespace", "a backend in another namespace needs a ReferenceGrant, which the waypoint does not read; this backend gets no traffic")
		return destination{}, false
	}
	if ref.Port == nil {
		b.report(x.ref, ReasonBackendNotFound, path+".port", "required for a Service backend; this backend gets no traffic")
		return destination{}, false
	}
	return b.resolveDestination(x.ref, path, host, uint32(*ref.Port), "", info, p)
}

func (b *builder) mirror(x *xRoute, path string, f *gatewayv1.HTTPRequestMirrorFilter, info *serviceInfo, p servicePort) *routev3.RouteAction_RequestMirrorPolicy {
	if f == nil {
		b.problem(x.ref, path, "required by the filter type; ignored")
		return nil
	}
	d, ok := b.backend(x, path+".backendRef", f.BackendRef, info, p)
	if !ok {
		return nil
	}
	pct := &typev3.FractionalPercent{Numerator: 100}
	switch {
	case f.Percent != nil:
		pct = &typev3.FractionalPercent{Numerator: uint32(min(max(*f.Percent, 0), 100))}
	case f.Fraction != nil:
		den := int64(100)
		if f.Fraction.Denominator != nil && *f.Fraction.Denominator > 0 {
			den = int64(*f.Fraction.Denominator)
		}
		num := min(max(int64(f.Fraction.Numerator), 0), den)
		pct = &typev3.FractionalPercent{Numerator: uint32(num * 1_000_000 / den), Denominator: typev3.FractionalPercent_MILLION}
	}
	return mirrorPolicy(d.cluster(), pct)
}

// httpRule translates one HTTPRoute rule into one entry per match.
func (b *builder) httpRule(x *xRoute, ri int, rule *gatewayv1.HTTPRouteRule, info *serviceInfo, p servicePort) []routeEntry {
	path := fmt.Sprintf("spec.rules[%d]", ri)
	a := ruleAction{route: &routev3.Route{Decorator: decorator(info, p)}}
	host := ""
	for fi, f := range rule.Filters {
		fp := fmt.Sprintf("%s.filters[%d]", path, fi)
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			add, rm, h := b.headerFilter(x.ref, fp+".requestHeaderModifier", f.RequestHeaderModifier, true)
			a.route.RequestHeadersToAdd, a.route.RequestHeadersToRemove = append(a.route.RequestHeadersToAdd, add...), append(a.route.RequestHeadersToRemove, rm...)
			host = cmp.Or(h, host)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			add, rm, _ := b.headerFilter(x.ref, fp+".responseHeaderModifier", f.ResponseHeaderModifier, false)
			a.route.ResponseHeadersToAdd, a.route.ResponseHeadersToRemove = append(a.route.ResponseHeadersToAdd, add...), append(a.route.ResponseHeadersToRemove, rm...)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			a.redirect = f.RequestRedirect
		case gatewayv1.HTTPRouteFilterURLRewrite:
			a.rewrite = f.URLRewrite
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if m := b.mirror(x, fp+".requestMirror", f.RequestMirror, info, p); m != nil {
				a.mirrors = append(a.mirrors, m)
			}
		default:
			b.problem(x.ref, fp+".type", fmt.Sprintf("filter %s is not supported by the waypoint; requests matching the rule get 500", f.Type))
			a.failed = true
		}
	}
	if a.redirect == nil && !a.failed {
		for bi, br := range rule.BackendRefs {
			if d, ok := b.weightedBackend(x, fmt.Sprintf("%s.backendRefs[%d]", path, bi), br.BackendObjectReference, br.Weight, br.Filters, info, p); ok {
				a.dests = append(a.dests, d)
			}
		}
		b.needBackend(x, path, &a)
	}
	a.timeout = durationpb.New(0)
	var perTry *durationpb.Duration
	if t := rule.Timeouts; t != nil {
		if d, ok := b.gwDuration(x.ref, path+".timeouts.request", t.Request); ok {
			a.timeout = d
		}
		if d, ok := b.gwDuration(x.ref, path+".timeouts.backendRequest", t.BackendRequest); ok {
			perTry = d
		}
	}
	a.hash = b.hashPolicy(a.dests)
	a.retry = b.gwRetry(x.ref, path+".retry", rule.Retry, a.hash != nil)
	if a.retry != nil && perTry != nil {
		a.retry.PerTryTimeout = perTry
	}
	if rule.SessionPersistence != nil {
		b.problem(x.ref, path+".sessionPersistence", "not supported by the waypoint (use a DestinationRule's consistentHash); ignored")
	}
	matches := rule.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	var out []routeEntry
	for mi, m := range matches {
		mp := fmt.Sprintf("%s.matches[%d]", path, mi)
		rm, key, prefix, ok := b.httpMatch(x.ref, mp, m)
		if !ok {
			continue
		}
		r := proto.Clone(a.route).(*routev3.Route)
		r.Name = fmt.Sprintf("%s.%s.%d.%d", x.ref.Namespace, x.ref.Name, ri, mi)
		r.Match = rm
		if !b.httpAction(x, path, &a, r, rm, prefix, host) {
			r.Action = internalError()
		}
		if field, why := actionProblem(r); field != "" {
			b.problem(x.ref, path+".filters", fmt.Sprintf("%s %s; requests matching the rule get 500", field, why))
			r.Action = internalError()
		}
		out = append(out, routeEntry{route: r, key: key})
	}
	return out
}

// weightedBackend is a rule's backendRef at path with its own filters
// applied and its weight (1 when unset); false when it gets no traffic:
// it cannot be used or its weight is 0.
func (b *builder) weightedBackend(x *xRoute, path string, ref gatewayv1.BackendObjectReference, weight *int32, filters []gatewayv1.HTTPRouteFilter, info *serviceInfo, p servicePort) (destination, bool) {
	d, ok := b.backend(x, path, ref, info, p)
	if !ok || !b.backendFilters(x, path, filters, &d) {
		return destination{}, false
	}
	d.weight = 1
	if weight != nil {
		d.weight = uint32(max(*weight, 0))
	}
	return d, d.weight > 0
}

// needBackend fails the rule at path, and says so on the route, when none
// of its backends gets traffic.
func (b *builder) needBackend(x *xRoute, path string, a *ruleAction) {
	if len(a.dests) == 0 {
		b.report(x.ref, ReasonBackendNotFound, path+".backendRefs", "no backend with a weight above 0 can be reached; requests matching the rule get 500")
		a.failed = true
	}
}

// backendFilters applies a backendRef's own filters: header modifiers
// only. false when the backend cannot be used.
func (b *builder) backendFilters(x *xRoute, path string, filters []gatewayv1.HTTPRouteFilter, d *destination) bool {
	for fi, f := range filters {
		fp := fmt.Sprintf("%s.filters[%d]", path, fi)
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			add, rm, host := b.headerFilter(x.ref, fp+".requestHeaderModifier", f.RequestHeaderModifier, true)
			if host != "" {
				b.problem(x.ref, fp+".requestHeaderModifier", "a backend's filter cannot rewrite the host; ignored")
			}
			d.reqAdd, d.reqRemove = append(d.reqAdd, add...), append(d.reqRemove, rm...)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			add, rm, _ := b.headerFilter(x.ref, fp+".responseHeaderModifier", f.ResponseHeaderModifier, false)
			d.respAdd, d.respRemove = append(d.respAdd, add...), append(d.respRemove, rm...)
		default:
			b.report(x.ref, ReasonUnsupportedValue, fp+".type", fmt.Sprintf("filter %s on a backend is not supported by the waypoint; this backend gets no traffic", f.Type))
			return false
		}
	}
	return true
}

// httpMatch translates a match; prefix is the path prefix it matches, for
// prefix rewrites ("" unless a PathPrefix match).
func (b *builder) httpMatch(ref ObjectRef, path string, m gatewayv1.HTTPRouteMatch) (rm *routev3.RouteMatch, key precedence, prefix string, ok bool) {
	rm = &routev3.RouteMatch{}
	typ, value := gatewayv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			value = *m.Path.Value
		}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: value}
		key.pathRank = rankExact
	case gatewayv1.PathMatchPathPrefix:
		// Gateway API's prefix matches whole path segments and ignores a
		// trailing "/".
		prefix = value
		if why := checkPrefix(value); why != "" {
			b.problem(ref, path+".path.value", why+"; this match is left out")
			return nil, key, "", false
		}
		if value != "/" {
			prefix = strings.TrimSuffix(value, "/")
			rm.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: prefix}
		} else {
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		}
		key.pathRank = rankPrefix
	case gatewayv1.PathMatchRegularExpression:
		sm, err := regexMatcher(value)
		if err != nil {
			b.problem(ref, path+".path.value", err.Error()+"; this match is left out")
			return nil, key, "", false
		}
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: sm.GetSafeRegex()}
		key.pathRank = rankRegex
	default:
		b.problem(ref, path+".path.type", fmt.Sprintf("%q is not a path match type; this match is left out", typ))
		return nil, key, "", false
	}
	key.pathLen = len(value)
	if m.Method != nil {
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exactMatcher(string(*m.Method))}})
		key.method = true
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		if why := checkMatchName(name, true); why != "" {
			b.problem(ref, fmt.Sprintf("%s.headers[%d].name", path, i), why+"; this match is left out")
			return nil, key, "", false
		}
		if seen[name] {
			continue // Gateway API: the first match of a name wins
		}
		seen[name] = true
		sm, err := gwStringMatch(h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression, h.Value)
		if err != nil {
			b.problem(ref, fmt.Sprintf("%s.headers[%d].value", path, i), err.Error()+"; this match is left out")
			return nil, key, "", false
		}
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}})
		key.headers++
	}
	seen = map[string]bool{}
	for i, q := range m.QueryParams {
		if why := checkMatchName(string(q.Name), false); why != "" {
			b.problem(ref, fmt.Sprintf("%s.queryParams[%d].name", path, i), why+"; this match is left out")
			return nil, key, "", false
		}
		if seen[string(q.Name)] {
			continue
		}
		seen[string(q.Name)] = true
		sm, err := gwStringMatch(q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression, q.Value)
		if err != nil {
			b.problem(ref, fmt.Sprintf("%s.queryParams[%d].value", path, i), err.Error()+"; this match is left out")
			return nil, key, "", false
		}
		rm.QueryParameters = append(rm.QueryParameters, &routev3.QueryParameterMatcher{Name: string(q.Name), QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}})
		key.query++
	}
	return rm, key, prefix, true
}

func gwStringMatch(regex bool, v string) (*matcherv3.StringMatcher, error) {
	if regex {
		return regexMatcher(v)
	}
	return exactMatcher(v), nil
}

// httpAction sets r's action for one match of the rule. false: 500.
func (b *builder) httpAction(x *xRoute, path string, a *ruleAction, r *routev3.Route, rm *routev3.RouteMatch, prefix, host string) bool {
	if a.failed {
		return false
	}
	if rd := a.redirect; rd != nil {
		fp := path + ".filters.requestRedirect"
		out := &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_FOUND}
		if rd.StatusCode != nil {
			code, ok := redirectCodes[uint32(*rd.StatusCode)]
			if !ok || *rd.StatusCode == 0 {
				b.problem(x.ref, fp+".statusCode", fmt.Sprintf("%d is not a redirect status; requests matching the rule get 500", *rd.StatusCode))
				return false
			}
			out.ResponseCode = code
		}
		if rd.Scheme != nil {
			out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: strings.ToLower(*rd.Scheme)}
		}
		if rd.Hostname != nil {
			out.HostRedirect = string(*rd.Hostname)
		}
		if rd.Port != nil {
			if *rd.Port < 1 || *rd.Port > 65535 {
				b.problem(x.ref, fp+".port", fmt.Sprintf("%d is not a port; requests matching the rule get 500", *rd.Port))
				return false
			}
			out.PortRedirect = uint32(*rd.Port)
		}
		if pm := rd.Path; pm != nil {
			switch {
			case pm.Type == gatewayv1.FullPathHTTPPathModifier && pm.ReplaceFullPath != nil:
				out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: *pm.ReplaceFullPath}
			case pm.Type == gatewayv1.PrefixMatchHTTPPathModifier && pm.ReplacePrefixMatch != nil:
				pr, rr, ok := b.prefixRewrite(x.ref, fp+".path", rm, prefix, *pm.ReplacePrefixMatch)
				if !ok {
					return false
				}
				if rr != nil {
					out.PathRewriteSpecifier = &routev3.RedirectAction_RegexRewrite{RegexRewrite: rr}
				} else {
					out.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: pr}
				}
			default:
				b.problem(x.ref, fp+".path", "a path modifier needs its type's value; requests matching the rule get 500")
				return false
			}
		}
		r.Action = &routev3.Route_Redirect{Redirect: out}
		return true
	}
	action := &routev3.RouteAction{
		Timeout:               a.timeout,
		RetryPolicy:           a.retry,
		HashPolicy:            a.hash,
		RequestMirrorPolicies: a.mirrors,
	}
	if host != "" {
		action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: host}
	}
	if rw := a.rewrite; rw != nil {
		fp := path + ".filters.urlRewrite"
		if rw.Hostname != nil {
			action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*rw.Hostname)}
		}
		if pm := rw.Path; pm != nil {
			switch {
			case pm.Type == gatewayv1.FullPathHTTPPathModifier && pm.ReplaceFullPath != nil:
				action.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/.*$"}, Substitution: literalSubstitution(*pm.ReplaceFullPath)}
			case pm.Type == gatewayv1.PrefixMatchHTTPPathModifier && pm.ReplacePrefixMatch != nil:
				pr, rr, ok := b.prefixRewrite(x.ref, fp+".path", rm, prefix, *pm.ReplacePrefixMatch)
				if !ok {
					return false
				}
				action.PrefixRewrite, action.RegexRewrite = pr, rr
			default:
				b.problem(x.ref, fp+".path", "a path modifier needs its type's value; requests matching the rule get 500")
				return false
			}
		}
	}
	forward(r, action, a.dests)
	return true
}

// prefixRewrite is ReplacePrefixMatch for a PathPrefix match, with Gateway
// API's segment semantics: "/foo" → "/bar" sends "/foo/x" to "/bar/x", and
// "/foo" → "/" sends it to "/x" (not "//x").
func (b *builder) prefixRewrite(ref ObjectRef, path string, rm *routev3.RouteMatch, prefix, value string) (string, *matcherv3.RegexMatchAndSubstitute, bool) {
	switch {
	case rm.GetPath() != "":
		return value, nil, true // an exact match's whole path is its prefix
	case prefix == "":
		b.problem(ref, path+".replacePrefixMatch", "needs a PathPrefix match; requests matching the rule get 500")
		return "", nil, false
	case prefix == "/":
		return strings.TrimSuffix(value, "/") + "/", nil, true
	case value == "/" || value == "":
		return "", &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix) + "/*"}, Substitution: "/"}, true
	}
	return strings.TrimSuffix(value, "/"), nil, true
}

// gwDuration parses a Gateway API duration ("10s", "1h30m"); "0s" turns the
// timeout off.
func (b *builder) gwDuration(ref ObjectRef, path string, d *gatewayv1.Duration) (*durationpb.Duration, bool) {
	if d == nil {
		return nil, false
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v < 0 {
		b.problem(ref, path, fmt.Sprintf("%q is not a duration; ignored", *d))
		return nil, false
	}
	return durationpb.New(v), true
}

// gwRetry is a rule's retry: istiod's default policy when unset; attempts,
// codes and backoff replace its parts.
func (b *builder) gwRetry(ref ObjectRef, path string, in *gatewayv1.HTTPRouteRetry, hashed bool) *routev3.RetryPolicy {
	out := defaultRetryPolicy(hashed)
	if in == nil {
		return out
	}
	if in.Attempts != nil {
		if *in.Attempts <= 0 {
			return nil
		}
		out.NumRetries = wrapperspb.UInt32(uint32(*in.Attempts))
	}
	if len(in.Codes) > 0 {
		out.RetriableStatusCodes = nil
		for i, c := range in.Codes {
			if c < 400 || c > 599 {
				b.problem(ref, fmt.Sprintf("%s.codes[%d]", path, i), fmt.Sprintf("%d is not an HTTP error status; ignored", c))
				continue
			}
			out.RetriableStatusCodes = append(out.RetriableStatusCodes, uint32(c))
		}
	}
	if d, ok := b.gwDuration(ref, path+".backoff", in.Backoff); ok && d.AsDuration() > 0 {
		out.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: d}
	}
	return out
}

// grpcRule translates one GRPCRoute rule: its method matches become path
// matches on /service/method.
func (b *builder) grpcRule(x *xRoute, ri int, rule *gatewayv1.GRPCRouteRule, info *serviceInfo, p servicePort) []routeEntry {
	path := fmt.Sprintf("spec.rules[%d]", ri)
	a := ruleAction{route: &routev3.Route{Decorator: decorator(info, p)}}
	host := ""
	for fi, f := range rule.Filters {
		fp := fmt.Sprintf("%s.filters[%d]", path, fi)
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			add, rm, h := b.headerFilter(x.ref, fp+".requestHeaderModifier", f.RequestHeaderModifier, true)
			a.route.RequestHeadersToAdd, a.route.RequestHeadersToRemove = append(a.route.RequestHeadersToAdd, add...), append(a.route.RequestHeadersToRemove, rm...)
			host = cmp.Or(h, host)
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			add, rm, _ := b.headerFilter(x.ref, fp+".responseHeaderModifier", f.ResponseHeaderModifier, false)
			a.route.ResponseHeadersToAdd, a.route.ResponseHeadersToRemove = append(a.route.ResponseHeadersToAdd, add...), append(a.route.ResponseHeadersToRemove, rm...)
		case gatewayv1.GRPCRouteFilterRequestMirror:
			if m := b.mirror(x, fp+".requestMirror", f.RequestMirror, info, p); m != nil {
				a.mirrors = append(a.mirrors, m)
			}
		default:
			b.problem(x.ref, fp+".type", fmt.Sprintf("filter %s is not supported by the waypoint; requests matching the rule get 500", f.Type))
			a.failed = true
		}
	}
	if !a.failed {
		for bi, br := range rule.BackendRefs {
			var hf []gatewayv1.HTTPRouteFilter
			for _, f := range br.Filters {
				hf = append(hf, gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterType(f.Type), RequestHeaderModifier: f.RequestHeaderModifier, ResponseHeaderModifier: f.ResponseHeaderModifier})
			}
			if d, ok := b.weightedBackend(x, fmt.Sprintf("%s.backendRefs[%d]", path, bi), br.BackendObjectReference, br.Weight, hf, info, p); ok {
				a.dests = append(a.dests, d)
			}
		}
		b.needBackend(x, path, &a)
	}
	a.timeout = durationpb.New(0)
	a.hash = b.hashPolicy(a.dests)
	a.retry = defaultRetryPolicy(a.hash != nil)
	if rule.SessionPersistence != nil {
		b.problem(x.ref, path+".sessionPersistence", "not supported by the waypoint (use a DestinationRule's consistentHash); ignored")
	}
	matches := rule.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.GRPCRouteMatch{{}}
	}
	var out []routeEntry
	for mi, m := range matches {
		mp := fmt.Sprintf("%s.matches[%d]", path, mi)
		rm, key, ok := b.grpcMatch(x.ref, mp, m)
		if !ok {
			continue
		}
		r := proto.Clone(a.route).(*routev3.Route)
		r.Name = fmt.Sprintf("%s.%s.%d.%d", x.ref.Namespace, x.ref.Name, ri, mi)
		r.Match = rm
		if !b.httpAction(x, path, &a, r, rm, "", host) {
			r.Action = internalError()
		}
		if field, why := actionProblem(r); field != "" {
			b.problem(x.ref, path+".filters", fmt.Sprintf("%s %s; requests matching the rule get 500", field, why))
			r.Action = internalError()
		}
		out = append(out, routeEntry{route: r, key: key})
	}
	return out
}

// grpcMatch is Istio's GRPCRoute method match: service and method exact is
// the path /service/method; the service alone the prefix /service/; the
// method alone, or a regular expression, a regex on the path.
func (b *builder) grpcMatch(ref ObjectRef, path string, m gatewayv1.GRPCRouteMatch) (*routev3.RouteMatch, precedence, bool) {
	rm := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	key := precedence{pathRank: rankPrefix, pathLen: 1}
	if mm := m.Method; mm != nil {
		svc, method := "", ""
		if mm.Service != nil {
			svc = *mm.Service
		}
		if mm.Method != nil {
			method = *mm.Method
		}
		regex := mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression
		switch {
		case !regex && svc != "" && method != "":
			rm.PathSpecifier = &routev3.RouteMatch_Path{Path: "/" + svc + "/" + method}
			key = precedence{pathRank: rankExact, pathLen: len(svc) + len(method) + 2}
		case !regex && svc != "":
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/" + svc + "/"}
			key = precedence{pathRank: rankPrefix, pathLen: len(svc) + 2}
		case !regex && method != "":
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/[^/]+/" + regexp.QuoteMeta(method)}}
			key = precedence{pathRank: rankRegex, pathLen: len(method)}
		case regex && (svc != "" || method != ""):
			re := "/" + cmp.Or(svc, "[^/]+") + "/" + cmp.Or(method, "[^/]+")
			if _, err := regexp.Compile(re); err != nil {
				b.problem(ref, path+".method", fmt.Sprintf("invalid RE2 regex %q: %v; this match is left out", re, err))
				return nil, key, false
			}
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}
			key = precedence{pathRank: rankRegex, pathLen: len(svc) + len(method)}
		}
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		if why := checkMatchName(name, true); why != "" {
			b.problem(ref, fmt.Sprintf("%s.headers[%d].name", path, i), why+"; this match is left out")
			return nil, key, false
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		sm, err := gwStringMatch(h.Type != nil && *h.Type == gatewayv1.GRPCHeaderMatchRegularExpression, h.Value)
		if err != nil {
			b.problem(ref, fmt.Sprintf("%s.headers[%d].value", path, i), err.Error()+"; this match is left out")
			return nil, key, false
		}
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}})
		key.headers++
	}
	return rm, key, true
}
