package l7

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// vsEntry is a VirtualService that applies to a host.
type vsEntry struct {
	vs  *networkingv1.VirtualService
	ref ObjectRef
}

// virtualServices returns, per bound host, the VirtualServices for it that
// the waypoint sees, oldest first (then by namespace/name), as istiod
// orders them. A VirtualService bound to gateways only is not for
// waypoints; one not exported to the waypoint's namespace is reported and
// ignored.
func (b *builder) virtualServices() map[string][]*vsEntry {
	all := slices.Clone(b.snap.VirtualServices)
	slices.SortStableFunc(all, func(x, y *networkingv1.VirtualService) int {
		return x.CreationTimestamp.Time.Compare(y.CreationTimestamp.Time)
	})
	out := map[string][]*vsEntry{}
	for _, vs := range all {
		if !forMesh(vs.Spec.Gateways) {
			continue
		}
		ref := ObjectRef{"VirtualService", vs.Namespace, vs.Name}
		var hosts []string
		for _, info := range b.bound {
			if vsNames(vs, info.host, b.opts.Mesh.DomainSuffix) {
				hosts = append(hosts, info.host)
			}
		}
		if len(hosts) == 0 {
			continue
		}
		if !visibleTo(vs.Spec.ExportTo, vs.Namespace, b.gw.Namespace) {
			b.report(ref, ReasonNotExported, "spec.exportTo", fmt.Sprintf("not exported to namespace %s of waypoint %s; ignored", b.gw.Namespace, b.gw.Name))
			continue
		}
		for _, h := range hosts {
			out[h] = append(out[h], &vsEntry{vs: vs, ref: ref})
		}
	}
	return out
}

// forMesh reports whether a VirtualService (or a match) with these
// gateways applies to mesh traffic: none listed, or "mesh" among them.
func forMesh(gateways []string) bool {
	return len(gateways) == 0 || slices.Contains(gateways, "mesh")
}

// vsNames reports whether one of the VirtualService's hosts is host: a
// short name completed in the VirtualService's namespace, a complete name,
// or a wildcard ("*", "*.example.com").
func vsNames(vs *networkingv1.VirtualService, host, suffix string) bool {
	for _, h := range vs.Spec.Hosts {
		h = strings.ToLower(h)
		switch {
		case h == "*":
			return true
		case strings.HasPrefix(h, "*."):
			if strings.HasSuffix(host, h[1:]) {
				return true
			}
		case resolveHost(h, vs.Namespace, suffix) == host:
			return true
		}
	}
	return false
}

// visibleTo applies Istio's exportTo: empty or "*" is every namespace, "."
// the object's own, "~" none.
func visibleTo(exportTo []string, own, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == ns || (e == "." && own == ns) {
			return true
		}
	}
	return false
}

// vsRoutes translates the http rules of the VirtualServices for a Service
// port into routes, in order: the first matching rule wins. nil when no
// rule applies to the port (the default route then serves it).
func (b *builder) vsRoutes(info *serviceInfo, p servicePort, entries []*vsEntry) []*routev3.Route {
	var out []*routev3.Route
	for _, e := range entries {
		b.vsUnsupported(e)
		for i, h := range e.vs.Spec.Http {
			if h == nil {
				continue
			}
			routes := b.vsRule(e, fmt.Sprintf("spec.http[%d]", i), h, info, p)
			if len(routes) > 0 {
				b.accepted[e.ref] = true
			}
			out = append(out, routes...)
		}
	}
	return out
}

// vsUnsupported reports the VirtualService's parts that waypoints do not
// serve.
func (b *builder) vsUnsupported(e *vsEntry) {
	if len(e.vs.Spec.Tcp) > 0 {
		b.problem(e.ref, "spec.tcp", "TCP routes are not supported by the waypoint; ignored")
	}
	if len(e.vs.Spec.Tls) > 0 {
		b.problem(e.ref, "spec.tls", "TLS routes are not supported by the waypoint; ignored")
	}
}

// vsRule translates one http rule: one route per match clause that applies
// to the port, all with the same action.
func (b *builder) vsRule(e *vsEntry, path string, h *networking.HTTPRoute, info *serviceInfo, p servicePort) []*routev3.Route {
	if h.Delegate != nil {
		b.problem(e.ref, path+".delegate", "delegation is not supported by the waypoint; the rule is left out")
		return nil
	}
	var matches []*routev3.RouteMatch
	var names []string
	if len(h.Match) == 0 {
		matches, names = []*routev3.RouteMatch{{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}}, []string{""}
	}
	for j, m := range h.Match {
		mp := fmt.Sprintf("%s.match[%d]", path, j)
		if m == nil || (m.Port != 0 && m.Port != uint32(p.port)) || !forMesh(m.Gateways) {
			continue
		}
		rm, ok := b.vsMatch(e.ref, mp, m)
		if !ok {
			continue
		}
		matches, names = append(matches, rm), append(names, m.Name)
	}
	if len(matches) == 0 {
		return nil
	}
	base := &routev3.Route{Decorator: decorator(info, p)}
	if !b.vsAction(e, path, h, info, p, base) {
		return nil
	}
	if field, why := actionProblem(base); field != "" {
		where := ".rewrite."
		if h.Redirect != nil {
			where = ".redirect."
		}
		b.problem(e.ref, path+where+field, why+"; the rule is left out")
		return nil
	}
	var out []*routev3.Route
	for j, m := range matches {
		r := proto.Clone(base).(*routev3.Route)
		r.Match = m
		// istiod's route name, which access logs show: the rule's
		// name, then "." and the match's name when the match has one
		// (also when the rule has none); empty when neither is named.
		r.Name = h.Name
		if names[j] != "" {
			r.Name = h.Name + "." + names[j]
		}
		out = append(out, r)
	}
	return out
}

// vsMatch translates one match clause. A condition the waypoint cannot
// check leaves the clause out (reported): dropping only the condition would
// match more than the clause says.
func (b *builder) vsMatch(ref ObjectRef, path string, m *networking.HTTPMatchRequest) (*routev3.RouteMatch, bool) {
	if len(m.SourceLabels) > 0 || m.SourceNamespace != "" {
		field := path + ".sourceLabels"
		if m.SourceNamespace != "" {
			field = path + ".sourceNamespace"
		}
		b.problem(ref, field, "matching on the client is not supported by the waypoint; this match clause is left out")
		return nil, false
	}
	out := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	switch u := m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: cmp.Or(u.Prefix, "/")}
	case *networking.StringMatch_Regex:
		re := u.Regex
		if m.IgnoreUriCase {
			// Envoy ignores case_sensitive for a regex; the flag goes in it.
			re = "(?i)" + re
		}
		sm, err := regexMatcher(re)
		if err != nil {
			b.problem(ref, path+".uri.regex", err.Error()+"; this match clause is left out")
			return nil, false
		}
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: sm.GetSafeRegex()}
	}
	if _, regex := out.PathSpecifier.(*routev3.RouteMatch_SafeRegex); m.IgnoreUriCase && !regex {
		out.CaseSensitive = wrapperspb.Bool(false)
	}
	type header struct {
		name, field string
		sm          *networking.StringMatch
		invert      bool
	}
	var headers []header
	if m.Method != nil {
		headers = append(headers, header{":method", path + ".method", m.Method, false})
	}
	if m.Scheme != nil {
		headers = append(headers, header{":scheme", path + ".scheme", m.Scheme, false})
	}
	if m.Authority != nil {
		headers = append(headers, header{":authority", path + ".authority", m.Authority, false})
	}
	for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
		headers = append(headers, header{strings.ToLower(k), fmt.Sprintf("%s.headers[%q]", path, k), m.Headers[k], false})
	}
	for _, k := range slices.Sorted(maps.Keys(m.WithoutHeaders)) {
		headers = append(headers, header{strings.ToLower(k), fmt.Sprintf("%s.withoutHeaders[%q]", path, k), m.WithoutHeaders[k], true})
	}
	for _, h := range headers {
		if why := checkMatchName(h.name, true); why != "" {
			b.problem(ref, h.field, why+"; this match clause is left out")
			return nil, false
		}
		hm := &routev3.HeaderMatcher{Name: h.name, InvertMatch: h.invert}
		sm, err := istioStringMatch(h.sm)
		if err != nil {
			b.problem(ref, h.field, err.Error()+"; this match clause is left out")
			return nil, false
		}
		if sm == nil {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: sm}
			// Envoy never matches an absent header with a value match, not
			// even inverted; withoutHeaders means "not this value", which
			// a request without the header satisfies.
			hm.TreatMissingHeaderAsEmpty = h.invert
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, k := range slices.Sorted(maps.Keys(m.QueryParams)) {
		if why := checkMatchName(k, false); why != "" {
			b.problem(ref, fmt.Sprintf("%s.queryParams[%q]", path, k), why+"; this match clause is left out")
			return nil, false
		}
		qm := &routev3.QueryParameterMatcher{Name: k}
		sm, err := istioStringMatch(m.QueryParams[k])
		if err != nil {
			b.problem(ref, fmt.Sprintf("%s.queryParams[%q]", path, k), err.Error()+"; this match clause is left out")
			return nil, false
		}
		if sm == nil {
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else {
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}
		}
		out.QueryParameters = append(out.QueryParameters, qm)
	}
	if m.StatPrefix != "" {
		b.problem(ref, path+".statPrefix", "per-route stats are not supported by the waypoint; ignored")
	}
	return out, true
}

// istioStringMatch is Istio's header and query parameter match: nil for a
// match that accepts any value (empty, an empty prefix, or the regex ".*"),
// which Istio turns into a presence match.
func istioStringMatch(sm *networking.StringMatch) (*matcherv3.StringMatcher, error) {
	switch m := sm.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return exactMatcher(m.Exact), nil
	case *networking.StringMatch_Prefix:
		if m.Prefix == "" {
			return nil, nil
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: m.Prefix}}, nil
	case *networking.StringMatch_Regex:
		if m.Regex == "*" || m.Regex == ".*" {
			return nil, nil
		}
		return regexMatcher(m.Regex)
	}
	return nil, nil
}

// vsAction fills r with the rule's action (redirect, direct response or
// forward) and what comes with it. false when the rule is left out.
func (b *builder) vsAction(e *vsEntry, path string, h *networking.HTTPRoute, info *serviceInfo, p servicePort, r *routev3.Route) bool {
	ref := e.ref
	if h.Headers != nil {
		b.vsHeaders(ref, path+".headers", h.Headers, r, nil)
	}
	host := hostRewrite(r)
	if h.Fault != nil {
		if f := b.vsFault(ref, path+".fault", h.Fault); f != nil {
			setPerFilter(r, faultName, f)
		}
	}
	if h.CorsPolicy != nil {
		if c := b.vsCors(ref, path+".corsPolicy", h.CorsPolicy); c != nil {
			setPerFilter(r, corsName, c)
		}
	}
	switch {
	case h.Redirect != nil:
		rd := b.vsRedirect(ref, path+".redirect", h.Redirect)
		if rd == nil {
			return false
		}
		r.Action = &routev3.Route_Redirect{Redirect: rd}
		return true
	case h.DirectResponse != nil:
		d := &routev3.DirectResponseAction{Status: h.DirectResponse.Status}
		if d.Status < 200 || d.Status > 599 {
			b.problem(ref, path+".directResponse.status", fmt.Sprintf("%d is not in [200, 599]; the rule is left out", d.Status))
			return false
		}
		switch body := h.DirectResponse.GetBody().GetSpecifier().(type) {
		case *networking.HTTPBody_String_:
			d.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body.String_}}
		case *networking.HTTPBody_Bytes:
			d.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: body.Bytes}}
		}
		if n := len(h.DirectResponse.GetBody().GetString_()) + len(h.DirectResponse.GetBody().GetBytes()); n > maxDirectBody {
			b.problem(ref, path+".directResponse.body", fmt.Sprintf("%d bytes, more than the waypoint's %d; the rule is left out", n, maxDirectBody))
			return false
		}
		r.Action = &routev3.Route_DirectResponse{DirectResponse: d}
		return true
	case len(h.Route) == 0:
		b.problem(ref, path, "no route, redirect or directResponse; the rule is left out")
		return false
	}
	var dests []destination
	for k, rd := range h.Route {
		dp := fmt.Sprintf("%s.route[%d]", path, k)
		if rd == nil || rd.Destination == nil {
			b.problem(ref, dp+".destination", "required; this destination is left out")
			continue
		}
		if len(h.Route) > 1 && rd.Weight == 0 {
			continue // weight 0 of several: never chosen
		}
		d, ok := b.resolveDestination(ref, dp+".destination", resolveHost(rd.Destination.Host, e.vs.Namespace, b.opts.Mesh.DomainSuffix),
			rd.Destination.GetPort().GetNumber(), rd.Destination.Subset, info, p)
		if !ok {
			continue
		}
		d.weight = uint32(max(rd.Weight, 0))
		if rd.Headers != nil {
			b.vsHeaders(ref, dp+".headers", rd.Headers, nil, &d)
		}
		dests = append(dests, d)
	}
	if len(dests) == 0 {
		b.report(ref, ReasonBackendNotFound, path+".route", "no destination can be reached; requests matching the rule get 500")
		r.Action = internalError()
		return true
	}
	action := &routev3.RouteAction{Timeout: durationpb.New(0)}
	if h.Timeout != nil {
		action.Timeout = durationOf(h.Timeout)
	}
	if rw := h.Rewrite; rw != nil {
		if rw.Uri != "" && rw.UriRegexRewrite != nil {
			b.problem(ref, path+".rewrite.uriRegexRewrite", "only one of uri and uriRegexRewrite may be set; uriRegexRewrite ignored")
		}
		switch {
		case rw.Uri != "":
			action.PrefixRewrite = rw.Uri
		case rw.UriRegexRewrite != nil:
			if err := checkSubstitution(rw.UriRegexRewrite.Match, rw.UriRegexRewrite.Rewrite); err != nil {
				b.problem(ref, path+".rewrite.uriRegexRewrite", err.Error()+"; the rule is left out")
				return false
			}
			action.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
				Pattern:      &matcherv3.RegexMatcher{Regex: rw.UriRegexRewrite.Match},
				Substitution: rw.UriRegexRewrite.Rewrite,
			}
		}
		if rw.Authority != "" {
			action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.Authority}
		}
	}
	if host != "" && action.HostRewriteSpecifier == nil {
		action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: host}
	}
	action.HashPolicy = b.hashPolicy(dests)
	action.RetryPolicy = b.vsRetries(ref, path+".retries", h.Retries, action.HashPolicy != nil)
	b.vsMirrors(e, path, h, info, p, action)
	forward(r, action, dests)
	return true
}

// hostRewrite takes a host or :authority "set" out of the route's request
// headers (Istio turns it into an authority rewrite) and returns it.
func hostRewrite(r *routev3.Route) string {
	host := ""
	r.RequestHeadersToAdd = slices.DeleteFunc(r.RequestHeadersToAdd, func(o *corev3.HeaderValueOption) bool {
		if isAuthority(o.Header.Key) {
			host = o.Header.Value
			return true
		}
		return false
	})
	return host
}

// vsHeaders applies header operations to the route r, or to the
// destination d.
func (b *builder) vsHeaders(ref ObjectRef, path string, hs *networking.Headers, r *routev3.Route, d *destination) {
	ops := func(dir string, o *networking.Headers_HeaderOperations) (add []*corev3.HeaderValueOption, remove []string) {
		if o == nil {
			return nil, nil
		}
		op := func(kind string, m map[string]string, overwrite bool) {
			for _, k := range slices.Sorted(maps.Keys(m)) {
				name := strings.ToLower(k)
				if overwrite && dir == "request" && isAuthority(name) && r != nil {
					add = append(add, headerOption(name, m[k], true)) // taken out by hostRewrite
					continue
				}
				if isAuthority(name) || strings.HasPrefix(name, ":") {
					b.problem(ref, fmt.Sprintf("%s.%s.%s[%q]", path, dir, kind, k), "pseudo-headers and host cannot be modified here; ignored")
					continue
				}
				if why := checkHeader(name, m[k]); why != "" {
					b.problem(ref, fmt.Sprintf("%s.%s.%s[%q]", path, dir, kind, k), why+"; ignored")
					continue
				}
				add = append(add, headerOption(name, m[k], overwrite))
			}
		}
		op("set", o.Set, true)
		op("add", o.Add, false)
		for i, k := range o.Remove {
			name := strings.ToLower(k)
			if why := checkHeader(name, ""); why != "" || isAuthority(name) || strings.HasPrefix(name, ":") {
				b.problem(ref, fmt.Sprintf("%s.%s.remove[%d]", path, dir, i), fmt.Sprintf("%q cannot be removed; ignored", k))
				continue
			}
			remove = append(remove, name)
		}
		return add, remove
	}
	reqAdd, reqRm := ops("request", hs.Request)
	respAdd, respRm := ops("response", hs.Response)
	if r != nil {
		r.RequestHeadersToAdd, r.RequestHeadersToRemove = append(r.RequestHeadersToAdd, reqAdd...), append(r.RequestHeadersToRemove, reqRm...)
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = append(r.ResponseHeadersToAdd, respAdd...), append(r.ResponseHeadersToRemove, respRm...)
		return
	}
	d.reqAdd, d.reqRemove, d.respAdd, d.respRemove = reqAdd, reqRm, respAdd, respRm
}

var redirectCodes = map[uint32]routev3.RedirectAction_RedirectResponseCode{
	0:   routev3.RedirectAction_MOVED_PERMANENTLY,
	301: routev3.RedirectAction_MOVED_PERMANENTLY,
	302: routev3.RedirectAction_FOUND,
	303: routev3.RedirectAction_SEE_OTHER,
	307: routev3.RedirectAction_TEMPORARY_REDIRECT,
	308: routev3.RedirectAction_PERMANENT_REDIRECT,
}

func (b *builder) vsRedirect(ref ObjectRef, path string, in *networking.HTTPRedirect) *routev3.RedirectAction {
	code, ok := redirectCodes[in.RedirectCode]
	if !ok {
		b.problem(ref, path+".redirectCode", fmt.Sprintf("%d is not a redirect status (301, 302, 303, 307, 308); the rule is left out", in.RedirectCode))
		return nil
	}
	out := &routev3.RedirectAction{ResponseCode: code, HostRedirect: in.Authority}
	scheme := strings.ToLower(in.Scheme)
	if scheme != "" {
		out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: scheme}
	}
	if in.Uri != "" {
		out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: in.Uri}
	}
	switch p := in.RedirectPort.(type) {
	case *networking.HTTPRedirect_Port:
		if p.Port > 65535 {
			b.problem(ref, path+".port", fmt.Sprintf("%d is not a port; the rule is left out", p.Port))
			return nil
		}
		out.PortRedirect = p.Port
	case *networking.HTTPRedirect_DerivePort:
		if p.DerivePort == networking.HTTPRedirect_FROM_PROTOCOL_DEFAULT {
			out.PortRedirect = 80
			if scheme == "https" {
				out.PortRedirect = 443
			}
		}
	}
	return out
}

// vsRetries is Istio's retry conversion: no retries block is istiod's
// default policy; attempts 0 is none; retryOn names conditions and status
// codes.
func (b *builder) vsRetries(ref ObjectRef, path string, in *networking.HTTPRetry, hashed bool) *routev3.RetryPolicy {
	if in == nil {
		return defaultRetryPolicy(hashed)
	}
	if in.Attempts <= 0 {
		return nil
	}
	out := defaultRetryPolicy(hashed)
	out.NumRetries = wrapperspb.UInt32(uint32(in.Attempts))
	if in.RetryOn != "" {
		var conds []string
		var codes []uint32
		for _, c := range strings.Split(in.RetryOn, ",") {
			c = strings.TrimSpace(c)
			if c == "" {
				continue
			}
			if n, err := strconv.ParseUint(c, 10, 32); err == nil {
				if n < 100 || n > 599 {
					b.problem(ref, path+".retryOn", fmt.Sprintf("%d is not an HTTP status; ignored", n))
					continue
				}
				codes = append(codes, uint32(n))
				continue
			}
			if !retryConditions[c] {
				b.problem(ref, path+".retryOn", fmt.Sprintf("unknown condition %q; ignored", c))
				continue
			}
			if !slices.Contains(conds, c) {
				conds = append(conds, c)
			}
		}
		if len(codes) > 0 && !slices.Contains(conds, "retriable-status-codes") {
			conds = append(conds, "retriable-status-codes")
		}
		out.RetryOn, out.RetriableStatusCodes = strings.Join(conds, ","), codes
	}
	if in.PerTryTimeout != nil {
		out.PerTryTimeout = durationOf(in.PerTryTimeout)
	}
	if in.Backoff != nil && in.Backoff.AsDuration() > 0 {
		out.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationOf(in.Backoff)}
	}
	if in.RetryIgnorePreviousHosts != nil && !in.RetryIgnorePreviousHosts.Value {
		out.RetryHostPredicate = nil
	}
	if in.RetryRemoteLocalities.GetValue() {
		b.problem(ref, path+".retryRemoteLocalities", "retrying in other localities (a retry priority) is not supported by the waypoint; ignored")
	}
	return out
}

// retryConditions are Envoy's retry_on conditions (HTTP and gRPC).
var retryConditions = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true, "connect-failure": true,
	"envoy-ratelimited": true, "retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"retriable-headers": true, "http3-post-connect-failure": true,
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

// vsMirrors adds mirror (with mirrorPercentage or the older mirrorPercent)
// and mirrors.
func (b *builder) vsMirrors(e *vsEntry, path string, h *networking.HTTPRoute, info *serviceInfo, p servicePort, action *routev3.RouteAction) {
	add := func(field string, d *networking.Destination, pct *typev3.FractionalPercent) {
		md, ok := b.resolveDestination(e.ref, field, resolveHost(d.Host, e.vs.Namespace, b.opts.Mesh.DomainSuffix), d.GetPort().GetNumber(), d.Subset, info, p)
		if ok {
			action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, mirrorPolicy(md.cluster(), pct))
		}
	}
	if h.Mirror != nil {
		// istiod: 100 % when no share is given; an explicit 0 mirrors
		// nothing.
		pct := &typev3.FractionalPercent{Numerator: 1_000_000, Denominator: typev3.FractionalPercent_MILLION}
		switch {
		case h.MirrorPercentage != nil:
			pct = percentOf(h.MirrorPercentage.Value)
		case h.MirrorPercent != nil:
			pct = &typev3.FractionalPercent{Numerator: min(h.MirrorPercent.Value, 100) * 10_000, Denominator: typev3.FractionalPercent_MILLION}
		}
		if pct.Numerator > 0 {
			add(path+".mirror", h.Mirror, pct)
		}
	}
	for i, m := range h.Mirrors {
		if m == nil || m.Destination == nil {
			continue
		}
		pct := &typev3.FractionalPercent{Numerator: 1_000_000, Denominator: typev3.FractionalPercent_MILLION}
		if m.Percentage != nil {
			pct = percentOf(m.Percentage.Value)
		}
		if pct.Numerator > 0 {
			add(fmt.Sprintf("%s.mirrors[%d].destination", path, i), m.Destination, pct)
		}
	}
}

// grpcCodes are gRPC status names, as a fault's grpcStatus gives them.
var grpcCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
	"OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

// faultPercent is a fault's share as istiod writes it: percentage, else
// the older integer percent; neither is 0, Istio's documented default ("if
// left unspecified, no request will be delayed/aborted").
func faultPercent(p *networking.Percent, legacy int32) *typev3.FractionalPercent {
	if p != nil {
		return percentOf(p.Value)
	}
	return &typev3.FractionalPercent{Numerator: uint32(min(max(legacy, 0), 100)) * 10_000, Denominator: typev3.FractionalPercent_MILLION}
}

// vsFault is the rule's fault as the fault filter's per-route
// configuration; nil when nothing of it can be applied.
func (b *builder) vsFault(ref ObjectRef, path string, in *networking.HTTPFaultInjection) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := in.Delay; d != nil {
		switch t := d.HttpDelayType.(type) {
		case *networking.HTTPFaultInjection_Delay_FixedDelay:
			out.Delay = &commonfaultv3.FaultDelay{
				FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: durationOf(t.FixedDelay)},
				Percentage:         faultPercent(d.Percentage, d.Percent),
			}
		default:
			b.problem(ref, path+".delay", "only fixedDelay is supported by the waypoint; the delay is ignored")
		}
	}
	if a := in.Abort; a != nil {
		ab := &faultv3.FaultAbort{Percentage: faultPercent(a.Percentage, 0)}
		switch t := a.ErrorType.(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if t.HttpStatus < 200 || t.HttpStatus >= 600 {
				b.problem(ref, path+".abort.httpStatus", fmt.Sprintf("%d is not in [200, 600); the abort is ignored", t.HttpStatus))
				ab = nil
				break
			}
			ab.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(t.HttpStatus)}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			code, ok := grpcCodes[strings.ToUpper(t.GrpcStatus)]
			if !ok {
				b.problem(ref, path+".abort.grpcStatus", fmt.Sprintf("%q is not a gRPC status name; the abort is ignored", t.GrpcStatus))
				ab = nil
				break
			}
			ab.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: code}
		default:
			b.problem(ref, path+".abort", "only httpStatus and grpcStatus are supported by the waypoint; the abort is ignored")
			ab = nil
		}
		out.Abort = ab
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// vsCors is the rule's CORS policy as the CORS filter's per-route
// configuration, as istiod writes it.
func (b *builder) vsCors(ref ObjectRef, path string, in *networking.CorsPolicy) *corsv3.CorsPolicy {
	out := &corsv3.CorsPolicy{
		AllowMethods:  strings.Join(in.AllowMethods, ","),
		AllowHeaders:  strings.Join(in.AllowHeaders, ","),
		ExposeHeaders: strings.Join(in.ExposeHeaders, ","),
		FilterEnabled: &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100}},
	}
	for _, o := range in.AllowOrigin {
		out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, exactMatcher(o))
	}
	for i, o := range in.AllowOrigins {
		sm, err := istioStringMatch(o)
		switch {
		case err != nil:
			b.problem(ref, fmt.Sprintf("%s.allowOrigins[%d]", path, i), err.Error()+"; ignored")
			continue
		case sm == nil:
			sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}}
		}
		out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
	}
	if in.MaxAge != nil {
		out.MaxAge = strconv.FormatInt(int64(in.MaxAge.AsDuration().Seconds()), 10)
	}
	if in.AllowCredentials != nil {
		out.AllowCredentials = wrapperspb.Bool(in.AllowCredentials.Value)
	}
	switch in.UnmatchedPreflights {
	case networking.CorsPolicy_FORWARD:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(true)
	case networking.CorsPolicy_IGNORE:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(false)
	}
	return out
}

func setPerFilter(r *routev3.Route, name string, m proto.Message) {
	if r.TypedPerFilterConfig == nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	r.TypedPerFilterConfig[name] = mustAny(m)
}
