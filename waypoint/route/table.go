package route

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Table is one compiled route configuration. Build it with NewTable; it is
// immutable afterwards and safe for concurrent Decide calls.
type Table struct {
	Name         string
	Options      Options
	VirtualHosts []*VirtualHost

	exact    map[string]*VirtualHost
	suffixes []wildcards // "*.example.com": longest first; key is the part after "*"
	prefixes []wildcards // "example.*": longest first; key is the part before "*"
	star     *VirtualHost
}

type wildcards struct {
	n     int // length of every key in byKey
	byKey map[string]*VirtualHost
}

// VirtualHost is Envoy's config.route.v3.VirtualHost for the supported
// fields.
type VirtualHost struct {
	Name    string
	Domains []string // lowercase
	Routes  []*Route
	CORS    *CORSPolicy
	// IncludeRequestAttemptCount: the proxy sets x-envoy-attempt-count on
	// upstream requests.
	IncludeRequestAttemptCount bool

	RequestHeaders, ResponseHeaders *HeaderMutation
}

// ActionKind says what a route does with a matching request.
type ActionKind uint8

const (
	// ActionNone is the zero Decision: no route matched (Envoy answers 404
	// with response flag NR).
	ActionNone ActionKind = iota
	ActionForward
	ActionRedirect
	ActionDirectResponse
)

var actionNames = [...]string{"no-route", "forward", "redirect", "direct-response"}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("action(%d)", k)
}

// Route is Envoy's config.route.v3.Route for the supported fields. Exactly
// one of Forward, Redirect and Direct is set, as Action says.
type Route struct {
	Name      string
	Operation string // decorator.operation, for tracing and logs
	Match     RouteMatch
	Action    ActionKind
	Forward   *ForwardAction
	Redirect  *RedirectAction
	Direct    *DirectResponse
	CORS      *CORSPolicy // the effective policy: the route's, else its virtual host's
	// Fault is the route's fault (typed_per_filter_config of
	// envoy.filters.http.fault, else its virtual host's), a *fault.Fault of
	// package waypoint/filter/fault; nil when neither sets one. It is typed
	// any because that package imports this one for its matchers. It
	// replaces the chain's fault filter configuration for this route.
	Fault any

	RequestHeaders, ResponseHeaders *HeaderMutation

	// request and response header levels, in application order, for routes
	// without weighted clusters (weighted clusters carry their own).
	requestHeaders, responseHeaders HeaderMutations
}

// ForwardAction is Envoy's config.route.v3.RouteAction for the supported
// fields.
type ForwardAction struct {
	// Cluster is the single upstream; empty when Weighted is used.
	Cluster     string
	Weighted    []WeightedCluster
	TotalWeight uint64

	PrefixRewrite string // replaces the matched part of the path
	RegexRewrite  *RegexRewrite
	HostRewrite   string // host_rewrite_literal: the new :authority

	// Timeout is the upstream timeout; Envoy's default is 15s when the
	// field is unset, and 0 disables it.
	Timeout time.Duration
	Retry   *RetryPolicy
	Mirrors []Mirror
	// HashPolicies are what RING_HASH and MAGLEV clusters hash for a
	// request on this route (RequestHash); none: they pick at random.
	HashPolicies []HashPolicy
}

// WeightedCluster is one entry of weighted_clusters.
type WeightedCluster struct {
	Name   string
	Weight uint32

	RequestHeaders, ResponseHeaders *HeaderMutation

	requestHeaders, responseHeaders HeaderMutations
}

// RegexRewrite is Envoy's RegexMatchAndSubstitute: every match of Pattern in
// the path (query string excluded) is replaced by Substitution, where \0 to
// \9 are capture groups, as in RE2::GlobalReplace.
type RegexRewrite struct {
	Pattern      *regexp.Regexp
	Substitution string
}

// RetryPolicy is Envoy's config.route.v3.RetryPolicy for the supported
// fields, carried for the proxy to execute.
type RetryPolicy struct {
	RetryOn              []string // the comma-separated retry_on conditions
	NumRetries           uint32   // Envoy's default is 1
	PerTryTimeout        time.Duration
	RetriableStatusCodes []uint32
	BackOffBase          time.Duration // Envoy's default is 25ms
	BackOffMax           time.Duration // Envoy's default is 10 × BackOffBase
	// RetryOtherHosts is Envoy's previous_hosts retry host predicate: a
	// retry avoids hosts already tried, with up to HostSelectionMaxAttempts
	// picks.
	RetryOtherHosts          bool
	HostSelectionMaxAttempts int64
}

// Mirror is one request_mirror_policies entry: a copy of the request goes to
// Cluster for Percent parts per million of requests (1e6 when unset), fire
// and forget.
type Mirror struct {
	Cluster         string
	PartsPerMillion uint32
	// TraceSampled is the trace_sampled value for the mirror (nil: unset,
	// Envoy keeps the parent's sampling decision).
	TraceSampled *bool
}

// RedirectAction is Envoy's config.route.v3.RedirectAction.
type RedirectAction struct {
	Scheme        string // https_redirect becomes "https"
	Host          string
	Port          uint32
	PathRedirect  string // replaces the path; a query string in it wins over the request's
	PrefixRewrite string
	RegexRewrite  *RegexRewrite
	Code          int // 301, 302, 303, 307 or 308
	StripQuery    bool

	pathHasQuery bool
	hasPath      bool
}

// NewRedirectAction returns r ready for use.
func NewRedirectAction(r RedirectAction) *RedirectAction {
	r.hasPath = r.PathRedirect != ""
	r.pathHasQuery = strings.Contains(r.PathRedirect, "?")
	return &r
}

// DirectResponse is Envoy's config.route.v3.DirectResponseAction.
type DirectResponse struct {
	Status int
	Body   string
}

// CORSPolicy is Envoy's extensions.filters.http.cors.v3.CorsPolicy, carried
// for the proxy's CORS filter.
type CORSPolicy struct {
	AllowOrigins     []StringMatcher
	AllowMethods     string
	AllowHeaders     string
	ExposeHeaders    string
	MaxAge           string
	AllowCredentials *bool
	// AllowPrivateNetworkAccess and ForwardNotMatchingPreflights are the
	// fields of the same names (the latter defaults to true in Envoy).
	AllowPrivateNetworkAccess    *bool
	ForwardNotMatchingPreflights *bool
}

// Options are the route configuration's own fields.
type Options struct {
	// IgnorePortInHostMatching is ignore_port_in_host_matching: the
	// authority's port is dropped before the virtual host is chosen.
	IgnorePortInHostMatching bool
	// MostSpecificHeaderMutationsWins is most_specific_header_mutations_wins.
	MostSpecificHeaderMutationsWins bool
	// RequestHeaders and ResponseHeaders are the route configuration level
	// of the header mutations.
	RequestHeaders, ResponseHeaders *HeaderMutation
}

// FieldError is a table NewTable refuses: Path names the route
// configuration field, Problem what is wrong with it.
type FieldError struct{ Path, Problem string }

func (e *FieldError) Error() string { return e.Path + ": " + e.Problem }

// NewTable indexes the virtual hosts by domain, checks what Envoy checks
// (domains unique across the table, at most one "*", none empty), and fixes
// each route's order of header mutation levels. The virtual hosts and
// everything they point to must not be modified afterwards.
func NewTable(name string, opts Options, vhosts []*VirtualHost) (*Table, error) {
	t := &Table{Name: name, Options: opts, VirtualHosts: vhosts, exact: map[string]*VirtualHost{}}
	seen := map[string]int{}
	suffix := map[int]map[string]*VirtualHost{}
	prefix := map[int]map[string]*VirtualHost{}
	for i, vh := range vhosts {
		for j, d := range vh.Domains {
			if d == "" {
				return nil, &FieldError{fmt.Sprintf("virtual_hosts[%d].domains[%d]", i, j), "empty domain"}
			}
			if prev, dup := seen[d]; dup {
				return nil, &FieldError{fmt.Sprintf("virtual_hosts[%d].domains[%d]", i, j), fmt.Sprintf("domain %q is also in virtual_hosts[%d]", d, prev)}
			}
			seen[d] = i
			switch {
			case d == "*":
				t.star = vh
			case strings.HasPrefix(d, "*"):
				addWildcard(suffix, d[1:], vh)
			case strings.HasSuffix(d, "*"):
				addWildcard(prefix, d[:len(d)-1], vh)
			default:
				t.exact[d] = vh
			}
		}
		for k, r := range vh.Routes {
			if err := r.check(); err != nil {
				return nil, &FieldError{fmt.Sprintf("virtual_hosts[%d].routes[%d]", i, k), err.Error()}
			}
			req := [4]*HeaderMutation{nil, r.RequestHeaders, vh.RequestHeaders, opts.RequestHeaders}
			resp := [4]*HeaderMutation{nil, r.ResponseHeaders, vh.ResponseHeaders, opts.ResponseHeaders}
			r.requestHeaders = order(opts.MostSpecificHeaderMutationsWins, req)
			r.responseHeaders = order(opts.MostSpecificHeaderMutationsWins, resp)
			if r.Forward == nil {
				continue
			}
			for k := range r.Forward.Weighted {
				wc := &r.Forward.Weighted[k]
				req[0], resp[0] = wc.RequestHeaders, wc.ResponseHeaders
				wc.requestHeaders = order(opts.MostSpecificHeaderMutationsWins, req)
				wc.responseHeaders = order(opts.MostSpecificHeaderMutationsWins, resp)
			}
		}
	}
	t.suffixes = sortWildcards(suffix)
	t.prefixes = sortWildcards(prefix)
	return t, nil
}

// check holds a route to what Decide relies on, whoever built it.
func (r *Route) check() error {
	if (r.Match.Kind == PathRegex) != (r.Match.Regex != nil) {
		return fmt.Errorf("match: a regex goes with, and only with, a regex path match")
	}
	for i, m := range r.Match.PeerPrincipal {
		if (m.Kind == MatchRegex) != (m.Regex != nil) {
			return fmt.Errorf("match: peer principal matcher %d: a regex goes with, and only with, a regex match", i)
		}
	}
	switch r.Action {
	case ActionForward:
		if r.Forward == nil {
			return fmt.Errorf("forward action without a ForwardAction")
		}
		var sum uint64
		for _, wc := range r.Forward.Weighted {
			sum += uint64(wc.Weight)
		}
		if len(r.Forward.Weighted) > 0 && sum != r.Forward.TotalWeight || len(r.Forward.Weighted) > 0 && sum == 0 {
			return fmt.Errorf("weighted clusters: total weight %d, sum of weights %d", r.Forward.TotalWeight, sum)
		}
		for i, hp := range r.Forward.HashPolicies {
			if hp.Kind < HashHeader || hp.Kind > HashQueryParameter || hp.Kind != HashSourceIP && hp.Name == "" {
				return fmt.Errorf("hash policy %d: %v without a name", i, hp.Kind)
			}
		}
	case ActionRedirect:
		if r.Redirect == nil {
			return fmt.Errorf("redirect action without a RedirectAction")
		}
	case ActionDirectResponse:
		if r.Direct == nil {
			return fmt.Errorf("direct response action without a DirectResponse")
		}
	default:
		return fmt.Errorf("unknown action %d", r.Action)
	}
	return nil
}

func addWildcard(m map[int]map[string]*VirtualHost, key string, vh *VirtualHost) {
	if m[len(key)] == nil {
		m[len(key)] = map[string]*VirtualHost{}
	}
	m[len(key)][key] = vh
}

func sortWildcards(m map[int]map[string]*VirtualHost) []wildcards {
	var out []wildcards
	for n, byKey := range m {
		out = append(out, wildcards{n: n, byKey: byKey})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out
}

// order lists the non-nil levels (weighted cluster, route, virtual host,
// route configuration) in the order Envoy applies them: most specific
// first, so that a less specific overwrite stands; with mostSpecificWins
// the route, virtual host and route configuration levels are reversed, but
// a weighted cluster's level still comes first, as in Envoy, where the
// cluster entry evaluates its own headers before its route's.
func order(mostSpecificWins bool, levels [4]*HeaderMutation) HeaderMutations {
	if mostSpecificWins {
		levels[1], levels[3] = levels[3], levels[1]
	}
	var out HeaderMutations
	for _, m := range levels {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}
