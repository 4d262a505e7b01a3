package config

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/zmesh/zmesh/waypoint/route"
)

const (
	// defaultRouteTimeout is Envoy's upstream timeout when a route sets none.
	defaultRouteTimeout = 15 * time.Second
	// defaultMaxDirectBody is Envoy's max_direct_response_body_size_bytes.
	defaultMaxDirectBody = 4096
	corsFilter           = "envoy.filters.http.cors"
	faultFilter          = "envoy.filters.http.fault"
	previousHostsPred    = "envoy.retry_host_predicates.previous_hosts"
)

// CompileRoutes validates a route configuration against the supported
// subset and compiles it into a route table. Any set field the waypoint does
// not implement, and any invalid value, is an error (a *NackError) naming
// the field path. Regular expressions are compiled here, once.
func CompileRoutes(rc *routev3.RouteConfiguration) (*route.Table, error) {
	t, err := compileRoutes(rc)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = rc.GetName()
		}
		return nil, err
	}
	return t, nil
}

func compileRoutes(rc *routev3.RouteConfiguration) (*route.Table, error) {
	if rc == nil {
		return nil, nackf("", "no route configuration")
	}
	if err := checkSupported(rc.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if rc.GetValidateClusters().GetValue() {
		return nil, nackf("validate_clusters", "true not supported: the waypoint resolves clusters per request")
	}
	c := compiler{maxBody: defaultMaxDirectBody}
	if v := rc.GetMaxDirectResponseBodySizeBytes(); v != nil {
		c.maxBody = int(v.GetValue())
	}
	opts := route.Options{
		IgnorePortInHostMatching:        rc.GetIgnorePortInHostMatching(),
		MostSpecificHeaderMutationsWins: rc.GetMostSpecificHeaderMutationsWins(),
	}
	var err error
	if opts.RequestHeaders, err = c.mutation("", "request", rc.GetRequestHeadersToRemove(), rc.GetRequestHeadersToAdd()); err != nil {
		return nil, err
	}
	if opts.ResponseHeaders, err = c.mutation("", "response", rc.GetResponseHeadersToRemove(), rc.GetResponseHeadersToAdd()); err != nil {
		return nil, err
	}
	var vhosts []*route.VirtualHost
	for i, vh := range rc.GetVirtualHosts() {
		v, err := c.virtualHost(fmt.Sprintf("virtual_hosts[%d]", i), vh)
		if err != nil {
			return nil, err
		}
		vhosts = append(vhosts, v)
	}
	t, err := route.NewTable(rc.GetName(), opts, vhosts)
	var fe *route.FieldError
	if errors.As(err, &fe) {
		return nil, nackf(fe.Path, "%s", fe.Problem)
	}
	if err != nil {
		return nil, nackf("", "%v", err)
	}
	return t, nil
}

type compiler struct {
	maxBody int
}

func (c *compiler) virtualHost(path string, vh *routev3.VirtualHost) (*route.VirtualHost, error) {
	out := &route.VirtualHost{Name: vh.GetName(), IncludeRequestAttemptCount: vh.GetIncludeRequestAttemptCount()}
	if len(vh.GetDomains()) == 0 {
		return nil, nackf(path+".domains", "at least one domain is required")
	}
	for j, d := range vh.GetDomains() {
		for k := 0; k < len(d); k++ {
			if d[k] < 0x20 || d[k] == 0x7f {
				return nil, nackf(fmt.Sprintf("%s.domains[%d]", path, j), "control character in %q", d)
			}
		}
		out.Domains = append(out.Domains, strings.ToLower(d))
	}
	var err error
	if out.RequestHeaders, err = c.mutation(path, "request", vh.GetRequestHeadersToRemove(), vh.GetRequestHeadersToAdd()); err != nil {
		return nil, err
	}
	if out.ResponseHeaders, err = c.mutation(path, "response", vh.GetResponseHeadersToRemove(), vh.GetResponseHeadersToAdd()); err != nil {
		return nil, err
	}
	var vhFault any
	if out.CORS, vhFault, err = c.perFilter(path, vh.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	for k, r := range vh.GetRoutes() {
		cr, err := c.route(fmt.Sprintf("%s.routes[%d]", path, k), r)
		if err != nil {
			return nil, err
		}
		if cr.CORS == nil {
			cr.CORS = out.CORS
		}
		if cr.Fault == nil {
			cr.Fault = vhFault
		}
		out.Routes = append(out.Routes, cr)
	}
	return out, nil
}

func (c *compiler) route(path string, r *routev3.Route) (*route.Route, error) {
	out := &route.Route{Name: r.GetName(), Operation: r.GetDecorator().GetOperation()}
	var err error
	if r.GetMatch() == nil {
		return nil, nackf(path+".match", "required")
	}
	if out.Match, err = c.match(path+".match", r.GetMatch()); err != nil {
		return nil, err
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		out.Action = route.ActionForward
		out.Forward, err = c.forward(path+".route", a.Route, out.Match.Kind)
	case *routev3.Route_Redirect:
		out.Action = route.ActionRedirect
		out.Redirect, err = c.redirect(path+".redirect", a.Redirect)
	case *routev3.Route_DirectResponse:
		out.Action = route.ActionDirectResponse
		out.Direct, err = c.direct(path+".direct_response", a.DirectResponse)
	default:
		return nil, nackf(path, "one of route, redirect or direct_response is required")
	}
	if err != nil {
		return nil, err
	}
	if out.RequestHeaders, err = c.mutation(path, "request", r.GetRequestHeadersToRemove(), r.GetRequestHeadersToAdd()); err != nil {
		return nil, err
	}
	if out.ResponseHeaders, err = c.mutation(path, "response", r.GetResponseHeadersToRemove(), r.GetResponseHeadersToAdd()); err != nil {
		return nil, err
	}
	if out.CORS, out.Fault, err = c.perFilter(path, r.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *compiler) match(path string, m *routev3.RouteMatch) (route.RouteMatch, error) {
	out := route.RouteMatch{CaseSensitive: true}
	if cs := m.GetCaseSensitive(); cs != nil {
		out.CaseSensitive = cs.GetValue()
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.Kind, out.Path = route.PathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		out.Kind, out.Path = route.PathExact, p.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		v := p.PathSeparatedPrefix
		if v == "" || strings.ContainsAny(v, "?#") || strings.HasSuffix(v, "/") {
			return out, nackf(path+".path_separated_prefix", "%q must be non-empty, without '?' or '#', and not end in '/'", v)
		}
		out.Kind, out.Path = route.PathSeparatedPrefix, v
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(path+".safe_regex", p.SafeRegex)
		if err != nil {
			return out, err
		}
		out.Kind, out.Regex = route.PathRegex, re
	default:
		return out, nackf(path, "one of prefix, path, safe_regex or path_separated_prefix is required")
	}
	for i, h := range m.GetHeaders() {
		hm, err := c.headerMatcher(fmt.Sprintf("%s.headers[%d]", path, i), h)
		if err != nil {
			return out, err
		}
		out.Headers = append(out.Headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qp := fmt.Sprintf("%s.query_parameters[%d]", path, i)
		if q.GetName() == "" {
			return out, nackf(qp+".name", "required")
		}
		qm := route.QueryParameterMatcher{Name: q.GetName()}
		if sm := q.GetStringMatch(); sm != nil {
			s, err := stringMatcher(qp+".string_match", sm)
			if err != nil {
				return out, err
			}
			qm.String = &s
		}
		out.Query = append(out.Query, qm)
	}
	for i, fs := range m.GetFilterState() {
		fp := fmt.Sprintf("%s.filter_state[%d]", path, i)
		// Only the peer's identity, which the tunnel's mutual TLS proved,
		// is filter state here; any other key would match on something
		// the waypoint does not have.
		if fs.GetKey() != peerPrincipalKey {
			return out, nackf(fp+".key", "%q not supported (only %q)", fs.GetKey(), peerPrincipalKey)
		}
		if fs.GetStringMatch() == nil {
			return out, nackf(fp+".string_match", "required")
		}
		sm, err := stringMatcher(fp+".string_match", fs.GetStringMatch())
		if err != nil {
			return out, err
		}
		out.PeerPrincipal = append(out.PeerPrincipal, sm)
	}
	return out, nil
}

func (c *compiler) headerMatcher(path string, h *routev3.HeaderMatcher) (route.HeaderMatcher, error) {
	if h.GetName() == "" {
		return route.HeaderMatcher{}, nackf(path+".name", "required")
	}
	hm := route.HeaderMatcher{
		Name:                strings.ToLower(h.GetName()),
		Invert:              h.GetInvertMatch(),
		TreatMissingAsEmpty: h.GetTreatMissingHeaderAsEmpty(),
		// Envoy matches on presence when no specifier is set.
		Present: true,
	}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := stringMatcher(path+".string_match", s.StringMatch)
		if err != nil {
			return hm, err
		}
		hm.String = &sm
	case *routev3.HeaderMatcher_PresentMatch:
		hm.Present = s.PresentMatch
	}
	return route.NewHeaderMatcher(hm), nil
}

func stringMatcher(path string, m *matcherv3.StringMatcher) (route.StringMatcher, error) {
	out := route.StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Kind, out.Value = route.MatchExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Kind, out.Value = route.MatchPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Kind, out.Value = route.MatchSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Kind, out.Value = route.MatchContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if out.IgnoreCase {
			return out, nackf(path+".ignore_case", "has no effect with safe_regex (use (?i) in the pattern)")
		}
		re, err := compileRegex(path+".safe_regex", p.SafeRegex)
		if err != nil {
			return out, err
		}
		out.Kind, out.Regex = route.MatchRegex, re
	default:
		return out, nackf(path, "a match pattern is required")
	}
	if out.Kind != route.MatchExact && out.Kind != route.MatchRegex && out.Value == "" {
		// Envoy's validation requires prefix, suffix and contains patterns to be non-empty.
		return out, nackf(path, "empty pattern")
	}
	return out, nil
}

// compileRegex compiles an Envoy safe_regex (RE2) so that it must match the
// whole input, as Envoy's RE2 full match does.
func compileRegex(path string, m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(m.GetRegex()); err != nil {
		return nil, nackf(path+".regex", "invalid RE2 regex %q: %v", m.GetRegex(), err)
	}
	return regexp.MustCompile(`^(?:` + m.GetRegex() + `)$`), nil
}

func regexRewrite(path string, m *matcherv3.RegexMatchAndSubstitute) (*route.RegexRewrite, error) {
	if m.GetPattern() == nil {
		return nil, nackf(path+".pattern", "required")
	}
	// The rewrite pattern replaces every match, so it is not anchored.
	re, err := regexp.Compile(m.GetPattern().GetRegex())
	if err != nil {
		return nil, nackf(path+".pattern.regex", "invalid RE2 regex %q: %v", m.GetPattern().GetRegex(), err)
	}
	if err := route.CheckSubstitution(re, m.GetSubstitution()); err != nil {
		return nil, nackf(path+".substitution", "%v", err)
	}
	return &route.RegexRewrite{Pattern: re, Substitution: m.GetSubstitution()}, nil
}

func (c *compiler) forward(path string, a *routev3.RouteAction, kind route.PathMatchKind) (*route.ForwardAction, error) {
	out := &route.ForwardAction{PrefixRewrite: a.GetPrefixRewrite(), HostRewrite: a.GetHostRewriteLiteral(), Timeout: defaultRouteTimeout}
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return nil, nackf(path+".cluster", "empty cluster name")
		}
		out.Cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		if err := c.weighted(path+".weighted_clusters", cs.WeightedClusters, out); err != nil {
			return nil, err
		}
	default:
		return nil, nackf(path, "one of cluster or weighted_clusters is required")
	}
	if a.GetPrefixRewrite() != "" && a.GetRegexRewrite() != nil {
		return nil, nackf(path+".regex_rewrite", "only one of prefix_rewrite and regex_rewrite may be set")
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		var err error
		if out.RegexRewrite, err = regexRewrite(path+".regex_rewrite", rr); err != nil {
			return nil, err
		}
	}
	if t := a.GetTimeout(); t != nil {
		d, err := duration(path+".timeout", t)
		if err != nil {
			return nil, err
		}
		out.Timeout = d
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		var err error
		if out.Retry, err = retryPolicy(path+".retry_policy", rp); err != nil {
			return nil, err
		}
	}
	var err error
	if out.HashPolicies, err = hashPolicies(path+".hash_policy", a.GetHashPolicy()); err != nil {
		return nil, err
	}
	for i, mp := range a.GetRequestMirrorPolicies() {
		mpath := fmt.Sprintf("%s.request_mirror_policies[%d]", path, i)
		if mp.GetCluster() == "" {
			return nil, nackf(mpath+".cluster", "required")
		}
		m := route.Mirror{Cluster: mp.GetCluster(), PartsPerMillion: 1_000_000}
		if rf := mp.GetRuntimeFraction(); rf != nil {
			ppm, err := partsPerMillion(mpath+".runtime_fraction.default_value", rf.GetDefaultValue())
			if err != nil {
				return nil, err
			}
			m.PartsPerMillion = ppm
		}
		if ts := mp.GetTraceSampled(); ts != nil {
			v := ts.GetValue()
			m.TraceSampled = &v
		}
		out.Mirrors = append(out.Mirrors, m)
	}
	return out, nil
}

func (c *compiler) weighted(path string, wc *routev3.WeightedCluster, out *route.ForwardAction) error {
	if len(wc.GetClusters()) == 0 {
		return nackf(path+".clusters", "at least one cluster is required")
	}
	var sum uint64
	for i, cw := range wc.GetClusters() {
		cp := fmt.Sprintf("%s.clusters[%d]", path, i)
		if cw.GetName() == "" {
			return nackf(cp+".name", "required")
		}
		w := route.WeightedCluster{Name: cw.GetName(), Weight: cw.GetWeight().GetValue()}
		var err error
		if w.RequestHeaders, err = c.mutation(cp, "request", cw.GetRequestHeadersToRemove(), cw.GetRequestHeadersToAdd()); err != nil {
			return err
		}
		if w.ResponseHeaders, err = c.mutation(cp, "response", cw.GetResponseHeadersToRemove(), cw.GetResponseHeadersToAdd()); err != nil {
			return err
		}
		sum += uint64(w.Weight)
		out.Weighted = append(out.Weighted, w)
	}
	if sum == 0 {
		return nackf(path+".clusters", "the sum of the weights must be greater than 0")
	}
	if tw := wc.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != sum {
		return nackf(path+".total_weight", "%d is not the sum of the weights (%d)", tw.GetValue(), sum)
	}
	out.TotalWeight = sum
	return nil
}

// knownRetryOn are the retry_on conditions of Envoy's router (HTTP and gRPC).
// An unknown one is refused rather than ignored.
var knownRetryOn = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true, "connect-failure": true,
	"envoy-ratelimited": true, "retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"retriable-headers": true, "http3-post-connect-failure": true,
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

func retryPolicy(path string, rp *routev3.RetryPolicy) (*route.RetryPolicy, error) {
	out := &route.RetryPolicy{NumRetries: 1, BackOffBase: 25 * time.Millisecond, RetriableStatusCodes: rp.GetRetriableStatusCodes()}
	for _, cond := range strings.Split(rp.GetRetryOn(), ",") {
		cond = strings.TrimSpace(cond)
		if cond == "" {
			continue
		}
		if !knownRetryOn[cond] {
			return nil, nackf(path+".retry_on", "unknown condition %q", cond)
		}
		out.RetryOn = append(out.RetryOn, cond)
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = n.GetValue()
	}
	var err error
	if t := rp.GetPerTryTimeout(); t != nil {
		if out.PerTryTimeout, err = duration(path+".per_try_timeout", t); err != nil {
			return nil, err
		}
	}
	for i, code := range out.RetriableStatusCodes {
		if code < 100 || code > 599 {
			return nil, nackf(fmt.Sprintf("%s.retriable_status_codes[%d]", path, i), "%d is not an HTTP status", code)
		}
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		if bo.GetBaseInterval() == nil {
			return nil, nackf(path+".retry_back_off.base_interval", "required")
		}
		if out.BackOffBase, err = duration(path+".retry_back_off.base_interval", bo.GetBaseInterval()); err != nil {
			return nil, err
		}
		if out.BackOffBase <= 0 {
			return nil, nackf(path+".retry_back_off.base_interval", "must be positive")
		}
		if bo.GetMaxInterval() != nil {
			if out.BackOffMax, err = duration(path+".retry_back_off.max_interval", bo.GetMaxInterval()); err != nil {
				return nil, err
			}
			if out.BackOffMax < out.BackOffBase {
				return nil, nackf(path+".retry_back_off.max_interval", "less than base_interval")
			}
		}
	}
	if out.BackOffMax == 0 {
		out.BackOffMax = 10 * out.BackOffBase
	}
	for i, p := range rp.GetRetryHostPredicate() {
		pp := fmt.Sprintf("%s.retry_host_predicate[%d]", path, i)
		if p.GetName() != previousHostsPred {
			return nil, nackf(pp+".name", "%q not supported (only %s)", p.GetName(), previousHostsPred)
		}
		// The allow-list walk accepts any supported message inside an Any;
		// only this one belongs here.
		if tc := p.GetTypedConfig(); tc != nil {
			m, err := unpack(tc)
			if err != nil {
				return nil, nackf(pp+".typed_config", "%v", err)
			}
			if _, ok := m.(*previoushostsv3.PreviousHostsPredicate); !ok {
				return nil, nackf(pp+".typed_config", "%s is not a PreviousHostsPredicate", tc.GetTypeUrl())
			}
		}
		out.RetryOtherHosts = true
	}
	out.HostSelectionMaxAttempts = rp.GetHostSelectionRetryMaxAttempts()
	if out.HostSelectionMaxAttempts < 0 {
		return nil, nackf(path+".host_selection_retry_max_attempts", "negative")
	}
	return out, nil
}

var redirectCodes = map[routev3.RedirectAction_RedirectResponseCode]int{
	routev3.RedirectAction_MOVED_PERMANENTLY:  301,
	routev3.RedirectAction_FOUND:              302,
	routev3.RedirectAction_SEE_OTHER:          303,
	routev3.RedirectAction_TEMPORARY_REDIRECT: 307,
	routev3.RedirectAction_PERMANENT_REDIRECT: 308,
}

func (c *compiler) redirect(path string, r *routev3.RedirectAction) (*route.RedirectAction, error) {
	out := route.RedirectAction{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	code, ok := redirectCodes[r.GetResponseCode()]
	if !ok {
		return nil, nackf(path+".response_code", "unknown value %d", r.GetResponseCode())
	}
	out.Code = code
	if r.GetHttpsRedirect() {
		out.Scheme = "https"
	}
	if s := r.GetSchemeRedirect(); s != "" {
		out.Scheme = strings.ToLower(s)
	}
	if out.Port > 65535 {
		return nil, nackf(path+".port_redirect", "%d is not a port", out.Port)
	}
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		out.PathRedirect = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		out.PrefixRewrite = p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		rr, err := regexRewrite(path+".regex_rewrite", p.RegexRewrite)
		if err != nil {
			return nil, err
		}
		out.RegexRewrite = rr
	}
	return route.NewRedirectAction(out), nil
}

func (c *compiler) direct(path string, d *routev3.DirectResponseAction) (*route.DirectResponse, error) {
	if d.GetStatus() < 200 || d.GetStatus() > 599 {
		return nil, nackf(path+".status", "%d is not in [200, 599]", d.GetStatus())
	}
	out := &route.DirectResponse{Status: int(d.GetStatus())}
	if b := d.GetBody(); b != nil {
		out.Body = b.GetInlineString()
		if _, ok := b.GetSpecifier().(*corev3.DataSource_InlineBytes); ok {
			out.Body = string(b.GetInlineBytes())
		}
		if len(out.Body) > c.maxBody {
			return nil, nackf(path+".body", "%d bytes, more than max_direct_response_body_size_bytes (%d)", len(out.Body), c.maxBody)
		}
	}
	return out, nil
}

// mutation compiles one level's <dir>_headers_to_remove and
// <dir>_headers_to_add.
func (c *compiler) mutation(path, dir string, remove []string, add []*corev3.HeaderValueOption) (*route.HeaderMutation, error) {
	var rm []string
	for i, name := range remove {
		name = strings.ToLower(name)
		if err := modifiable(name); err != nil {
			return nil, nackf(fmt.Sprintf("%s[%d]", join(path, dir+"_headers_to_remove"), i), "%v", err)
		}
		rm = append(rm, name)
	}
	var values []route.HeaderValue
	for i, hv := range add {
		hp := fmt.Sprintf("%s[%d]", join(path, dir+"_headers_to_add"), i)
		if hv.GetHeader() == nil {
			return nil, nackf(hp+".header", "required")
		}
		name := strings.ToLower(hv.GetHeader().GetKey())
		if err := modifiable(name); err != nil {
			return nil, nackf(hp+".header.key", "%v", err)
		}
		raw := hv.GetHeader().GetValue()
		if raw != "" && len(hv.GetHeader().GetRawValue()) > 0 {
			return nil, nackf(hp+".header", "only one of value and raw_value may be set")
		}
		if raw == "" {
			raw = string(hv.GetHeader().GetRawValue())
		}
		value, err := literal(raw)
		if err != nil {
			return nil, nackf(hp+".header.value", "%v", err)
		}
		v := route.HeaderValue{Name: name, Value: value, KeepEmpty: hv.GetKeepEmptyValue()}
		if hv.GetAppend() != nil {
			if hv.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return nil, nackf(hp+".append", "append and append_action may not both be set")
			}
			if !hv.GetAppend().GetValue() {
				v.Action = route.OverwriteIfExistsOrAdd
			}
		} else {
			switch hv.GetAppendAction() {
			case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
				v.Action = route.AppendIfExistsOrAdd
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				v.Action = route.AddIfAbsent
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				v.Action = route.OverwriteIfExistsOrAdd
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				v.Action = route.OverwriteIfExists
			default:
				return nil, nackf(hp+".append_action", "unknown value %d", hv.GetAppendAction())
			}
		}
		values = append(values, v)
	}
	return route.NewHeaderMutation(rm, values), nil
}

// modifiable refuses what Envoy refuses to add or remove: pseudo-headers,
// host, and names that are not HTTP tokens.
func modifiable(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty header name")
	case strings.HasPrefix(name, ":") || name == "host":
		return fmt.Errorf("header %q may not be modified", name)
	case !httpguts.ValidHeaderFieldName(name):
		return fmt.Errorf("invalid header name %q", name)
	}
	return nil
}

// literal returns a header value with Envoy's "%%" escape undone. Any other
// "%" starts one of Envoy's substitution formatters, which the waypoint does
// not implement: refusing them beats sending the text verbatim.
func literal(v string) (string, error) {
	if !httpguts.ValidHeaderFieldValue(v) {
		return "", fmt.Errorf("invalid header value %q", v)
	}
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("value %q uses a %%FORMATTER%%: not supported", v)
	}
	return b.String(), nil
}

// perFilter compiles typed_per_filter_config: the CORS filter's policy and
// the fault filter's per-route fault (a *fault.Fault). Any other filter's
// entry is refused: its filter is not in the chain.
func (c *compiler) perFilter(path string, cfg map[string]*anypb.Any) (*route.CORSPolicy, any, error) {
	var out *route.CORSPolicy
	var flt any
	// In key order, so that the error for a table with two bad entries is
	// always the same one.
	for _, name := range slices.Sorted(maps.Keys(cfg)) {
		a := cfg[name]
		fp := fmt.Sprintf("%s[%q]", join(path, "typed_per_filter_config"), name)
		switch name {
		case corsFilter:
			m, err := unpack(a)
			if err != nil {
				return nil, nil, nackf(fp, "%v", err)
			}
			cp, ok := m.(*corsv3.CorsPolicy)
			if !ok {
				return nil, nil, nackf(fp, "%s is not a CorsPolicy", a.GetTypeUrl())
			}
			if out, err = cors(fp, cp); err != nil {
				return nil, nil, err
			}
		case faultFilter:
			f, err := CompileFaultPerRoute(fp, a)
			if err != nil {
				return nil, nil, err
			}
			flt = f
		default:
			return nil, nil, nackf(fp, "filter not supported in typed_per_filter_config")
		}
	}
	return out, flt, nil
}

func cors(path string, p *corsv3.CorsPolicy) (*route.CORSPolicy, error) {
	out := &route.CORSPolicy{
		AllowMethods:  p.GetAllowMethods(),
		AllowHeaders:  p.GetAllowHeaders(),
		ExposeHeaders: p.GetExposeHeaders(),
		MaxAge:        p.GetMaxAge(),
	}
	for i, sm := range p.GetAllowOriginStringMatch() {
		m, err := stringMatcher(fmt.Sprintf("%s.allow_origin_string_match[%d]", path, i), sm)
		if err != nil {
			return nil, err
		}
		out.AllowOrigins = append(out.AllowOrigins, m)
	}
	if fe := p.GetFilterEnabled(); fe != nil {
		ppm, err := partsPerMillion(path+".filter_enabled.default_value", fe.GetDefaultValue())
		if err != nil {
			return nil, err
		}
		if ppm != 1_000_000 {
			return nil, nackf(path+".filter_enabled", "only 100%% is supported")
		}
	}
	if v := p.GetAllowCredentials(); v != nil {
		b := v.GetValue()
		out.AllowCredentials = &b
	}
	if v := p.GetAllowPrivateNetworkAccess(); v != nil {
		b := v.GetValue()
		out.AllowPrivateNetworkAccess = &b
	}
	if v := p.GetForwardNotMatchingPreflights(); v != nil {
		b := v.GetValue()
		out.ForwardNotMatchingPreflights = &b
	}
	return out, nil
}

func partsPerMillion(path string, fp *typev3.FractionalPercent) (uint32, error) {
	if fp == nil {
		return 0, nackf(path, "required")
	}
	var scale uint64
	switch fp.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		scale = 10_000
	case typev3.FractionalPercent_TEN_THOUSAND:
		scale = 100
	case typev3.FractionalPercent_MILLION:
		scale = 1
	default:
		return 0, nackf(path+".denominator", "unknown value %d", fp.GetDenominator())
	}
	// Envoy treats a numerator above the denominator as 100%.
	return uint32(min(uint64(fp.GetNumerator())*scale, 1_000_000)), nil
}

func duration(path string, d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, nackf(path, "%v", err)
	}
	if d.AsDuration() < 0 {
		return 0, nackf(path, "negative")
	}
	return d.AsDuration(), nil
}
