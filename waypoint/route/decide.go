package route

import (
	"net/http"
	"strconv"
	"strings"
)

// Request is what routing looks at.
type Request struct {
	Authority string // :authority (Host), possibly with a port
	Method    string
	Path      string // :path: the path with its query string
	// Scheme is the request's scheme as Envoy sees it in x-forwarded-proto:
	// "http" (the default when empty) or "https".
	Scheme string
	Header http.Header // canonical keys, as net/http fills them
	// Random picks among weighted clusters: the cluster whose cumulative
	// weight range holds Random % total weight, as Envoy does with its
	// per-request random value.
	Random uint64
	// PeerPrincipal is the client's SPIFFE ID as its tunnel's mutual TLS
	// proved it (what Envoy's filter state io.istio.peer_principal holds);
	// empty for a request that came without one. It never comes from a
	// header: routes for one namespace's clients rely on it.
	PeerPrincipal string
}

func (r *Request) scheme() string {
	if r.Scheme == "" {
		return "http"
	}
	return r.Scheme
}

// Decision is what the proxy does with a request.
type Decision struct {
	Action      ActionKind // ActionNone: no route (404, response flag NR)
	VirtualHost *VirtualHost
	Route       *Route

	// ActionForward: the upstream cluster, and the :path and :authority to
	// send (the request's own when nothing rewrote them).
	Cluster   string
	Path      string
	Authority string

	// ActionRedirect: the status code and the Location header.
	Status   int
	Location string

	// RequestHeaders apply to the upstream request (ActionForward);
	// ResponseHeaders to the response, also to redirects and direct
	// responses, as Envoy does.
	RequestHeaders  HeaderMutations
	ResponseHeaders HeaderMutations
}

// Decide routes req through t. It does not modify t and allocates only for
// a rewritten path or authority, a redirect location, and headers that
// appear more than once.
func Decide(t *Table, req Request) Decision {
	vh := t.virtualHost(req.Authority)
	if vh == nil {
		return Decision{}
	}
	path, query := splitPath(req.Path)
	for _, r := range vh.Routes {
		n, ok := r.Match.match(&req, path, query)
		if !ok {
			continue
		}
		d := Decision{Action: r.Action, VirtualHost: vh, Route: r, RequestHeaders: r.requestHeaders, ResponseHeaders: r.responseHeaders}
		switch r.Action {
		case ActionForward:
			forward(&d, r.Forward, &req, path, n)
		case ActionRedirect:
			d.Status = r.Redirect.Code
			d.Location = r.Redirect.location(&req, path, n)
		case ActionDirectResponse:
			d.Status = r.Direct.Status
		}
		return d
	}
	return Decision{}
}

func forward(d *Decision, f *ForwardAction, req *Request, path string, matched int) {
	d.Cluster = f.Cluster
	if len(f.Weighted) > 0 {
		wc := f.pick(req.Random)
		d.Cluster = wc.Name
		d.RequestHeaders, d.ResponseHeaders = wc.requestHeaders, wc.responseHeaders
	}
	d.Path = rewritePath(req.Path, path, matched, f.PrefixRewrite, f.RegexRewrite)
	d.Authority = req.Authority
	if f.HostRewrite != "" {
		d.Authority = f.HostRewrite
	}
}

// pick is Envoy's weighted cluster choice: Random % TotalWeight falls in
// exactly one cluster's [begin, begin+weight) range, clusters taken in
// configuration order.
func (f *ForwardAction) pick(random uint64) *WeightedCluster {
	v := random % f.TotalWeight
	var begin uint64
	for i := range f.Weighted {
		end := begin + uint64(f.Weighted[i].Weight)
		if v < end {
			return &f.Weighted[i]
		}
		begin = end
	}
	// Unreachable: NewTable's caller guarantees TotalWeight is the sum.
	return &f.Weighted[len(f.Weighted)-1]
}

// rewritePath applies prefix_rewrite (replacing the matched part of the
// path, the rest and the query string kept) or regex_rewrite (on the path
// without the query string, which is kept), else returns the original.
func rewritePath(full, path string, matched int, prefix string, re *RegexRewrite) string {
	switch {
	case prefix != "":
		return prefix + full[matched:]
	case re != nil:
		return re.replaceAll(path) + full[len(path):]
	}
	return full
}

// splitPath returns the path without query string and fragment, and the
// query string without "?".
func splitPath(full string) (path, query string) {
	path = full
	if i := strings.IndexAny(full, "?#"); i >= 0 {
		path = full[:i]
		if full[i] == '?' {
			query = full[i+1:]
			if j := strings.IndexByte(query, '#'); j >= 0 {
				query = query[:j]
			}
		}
	}
	return path, query
}

// virtualHost picks the virtual host for authority: an exact domain, then
// suffix wildcards longest first, then prefix wildcards longest first, then
// "*". Domains are case-insensitive. The port stays part of the authority
// unless the table ignores ports, as in Envoy (Istio lists both "host" and
// "host:port" forms among a virtual host's domains).
func (t *Table) virtualHost(authority string) *VirtualHost {
	host := lowerASCII(authority)
	if t.Options.IgnorePortInHostMatching {
		host = stripPort(host)
	}
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffixes {
		// The wildcard must stand for at least one character.
		if len(host) > w.n {
			if vh, ok := w.byKey[host[len(host)-w.n:]]; ok {
				return vh
			}
		}
	}
	for _, w := range t.prefixes {
		if len(host) > w.n {
			if vh, ok := w.byKey[host[:w.n]]; ok {
				return vh
			}
		}
	}
	return t.star
}

// stripPort drops a ":port" suffix (after "]" for an IPv6 literal).
func stripPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.LastIndexByte(host, ']') > i {
		return host
	}
	if host[0] == '[' && host[i-1] != ']' {
		return host
	}
	if _, err := strconv.ParseUint(host[i+1:], 10, 16); err != nil {
		return host
	}
	return host[:i]
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// location builds the redirect's Location as Envoy's Http::Utility::newUri
// does.
func (r *RedirectAction) location(req *Request, path string, matched int) string {
	reqScheme := req.scheme()
	scheme := reqScheme
	if r.Scheme != "" {
		scheme = r.Scheme
	}
	port := ""
	if r.Port != 0 {
		port = ":" + strconv.FormatUint(uint64(r.Port), 10)
	}
	host := r.Host
	if host == "" {
		host = redirectHost(req.Authority, reqScheme, scheme, port)
	}
	var p string
	switch {
	case r.hasPath && r.pathHasQuery:
		p = r.PathRedirect
	case r.hasPath:
		p = r.PathRedirect
		if _, q, ok := strings.Cut(req.Path, "?"); ok && !r.StripQuery {
			p += "?" + q
		}
	default:
		p = rewritePath(req.Path, path, matched, r.PrefixRewrite, r.RegexRewrite)
		if r.StripQuery {
			if i := strings.IndexByte(p, '?'); i >= 0 {
				p = p[:i]
			}
		}
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return scheme + "://" + host + port + p
}

// redirectHost is the request's authority with its port removed when a
// new port is set, or when the scheme changes and the port is the old
// scheme's default (http://a:80 → https://a).
func redirectHost(authority, reqScheme, newScheme, newPort string) string {
	if authority == "" {
		return authority
	}
	var end int
	if authority[0] == '[' {
		end = strings.LastIndex(authority, "]:")
		if end >= 0 {
			end++
		}
	} else {
		end = strings.LastIndexByte(authority, ':')
	}
	if end < 0 {
		return authority
	}
	reqPort := authority[end:]
	remove := newPort != ""
	if newScheme != reqScheme {
		remove = remove || (reqScheme == "https" && reqPort == ":443") || (reqScheme == "http" && reqPort == ":80")
	}
	if remove {
		return authority[:end]
	}
	return authority
}
