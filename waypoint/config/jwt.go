package config

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"golang.org/x/net/http/httpguts"

	"github.com/zmesh/zmesh/waypoint/filter/jwt"
)

// Bounds of one jwt_authn filter.
const (
	maxJWTProviders        = 64
	maxJWTRequirementDepth = 8
)

// CompileJWT validates a jwt_authn filter's configuration against the
// supported subset and compiles it. Keys must be inline (local_jwks):
// zmeshd fetches remote key sets itself. Any set field the waypoint does
// not implement, and any invalid value, is a *NackError naming the field
// path (e.g. "providers[\"origins-0\"].remote_jwks").
func CompileJWT(name string, cfg *jwtv3.JwtAuthentication) (*jwt.Filter, error) {
	f, err := compileJWT(cfg)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = name
		}
		return nil, err
	}
	return f, nil
}

func compileJWT(cfg *jwtv3.JwtAuthentication) (*jwt.Filter, error) {
	if cfg == nil {
		return nil, nackf("", "no jwt_authn configuration")
	}
	if err := checkSupported(cfg.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if len(cfg.GetProviders()) > maxJWTProviders {
		return nil, nackf("providers", "%d providers, more than %d", len(cfg.GetProviders()), maxJWTProviders)
	}
	f := &jwt.Filter{Providers: map[string]*jwt.Provider{}, BypassCORSPreflight: cfg.GetBypassCorsPreflight()}
	for name, p := range cfg.GetProviders() {
		pp := fmt.Sprintf("providers[%q]", name)
		cp, err := jwtProvider(pp, name, p)
		if err != nil {
			return nil, err
		}
		f.Providers[name] = cp
	}
	for i, r := range cfg.GetRules() {
		rp := fmt.Sprintf("rules[%d]", i)
		m := r.GetMatch()
		rule := jwt.Rule{}
		switch {
		case m == nil:
			return nil, nackf(rp+".match", "required")
		case m.GetPrefix() != "" || m.GetPath() != "":
			rule.Prefix, rule.Path = m.GetPrefix(), m.GetPath()
		default:
			return nil, nackf(rp+".match", "only prefix and path matches are supported")
		}
		if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetCaseSensitive() != nil {
			return nil, nackf(rp+".match", "only prefix and path matches are supported")
		}
		if r.GetRequires() != nil {
			req, err := jwtRequirement(rp+".requires", r.GetRequires(), f.Providers, 0)
			if err != nil {
				return nil, err
			}
			rule.Requires = req
		}
		f.Rules = append(f.Rules, rule)
	}
	return f, nil
}

func jwtProvider(path, name string, p *jwtv3.JwtProvider) (*jwt.Provider, error) {
	out := &jwt.Provider{
		Name: name, Issuer: p.GetIssuer(), Audiences: p.GetAudiences(), Forward: p.GetForward(),
		FromParams: p.GetFromParams(), ClockSkew: jwt.DefaultClockSkew,
		SpaceDelimitedClaims: p.GetNormalizePayloadInMetadata().GetSpaceDelimitedClaims(),
	}
	if s := p.GetClockSkewSeconds(); s != 0 {
		if s > 3600 {
			return nil, nackf(path+".clock_skew_seconds", "%d is more than an hour", s)
		}
		out.ClockSkew = time.Duration(s) * time.Second
	}
	ds := p.GetLocalJwks()
	if ds == nil {
		// remote_jwks is refused by the allow-list already.
		return nil, nackf(path+".local_jwks", "required: keys are sent inline")
	}
	src := ds.GetInlineString()
	if b := ds.GetInlineBytes(); b != nil {
		src = string(b)
	}
	keys, err := jwt.ParseJWKS(src)
	if err != nil && !errors.Is(err, jwt.ErrNoKeys) {
		return nil, nackf(path+".local_jwks", "%v", err)
	}
	// A set without a usable key is kept: every token then fails, as with
	// istiod's placeholder key set while it cannot fetch the real one.
	out.Keys = keys
	for i, h := range p.GetFromHeaders() {
		hp := fmt.Sprintf("%s.from_headers[%d]", path, i)
		if !httpguts.ValidHeaderFieldName(h.GetName()) {
			return nil, nackf(hp+".name", "%q is not a header name", h.GetName())
		}
		out.FromHeaders = append(out.FromHeaders, jwt.HeaderLocation{Name: http.CanonicalHeaderKey(h.GetName()), Prefix: h.GetValuePrefix()})
	}
	for i, q := range p.GetFromParams() {
		if q == "" {
			return nil, nackf(fmt.Sprintf("%s.from_params[%d]", path, i), "empty")
		}
	}
	if h := p.GetForwardPayloadHeader(); h != "" {
		if !httpguts.ValidHeaderFieldName(h) {
			return nil, nackf(path+".forward_payload_header", "%q is not a header name", h)
		}
		out.ForwardPayloadHeader = http.CanonicalHeaderKey(h)
	}
	for i, c := range p.GetClaimToHeaders() {
		cp := fmt.Sprintf("%s.claim_to_headers[%d]", path, i)
		if !httpguts.ValidHeaderFieldName(c.GetHeaderName()) {
			return nil, nackf(cp+".header_name", "%q is not a header name", c.GetHeaderName())
		}
		if c.GetClaimName() == "" {
			return nil, nackf(cp+".claim_name", "required")
		}
		out.ClaimToHeaders = append(out.ClaimToHeaders, jwt.ClaimToHeader{Header: http.CanonicalHeaderKey(c.GetHeaderName()), Claim: c.GetClaimName()})
	}
	return out, nil
}

func jwtRequirement(path string, r *jwtv3.JwtRequirement, providers map[string]*jwt.Provider, depth int) (*jwt.Requirement, error) {
	if depth > maxJWTRequirementDepth {
		return nil, nackf(path, "nested deeper than %d", maxJWTRequirementDepth)
	}
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		if providers[t.ProviderName] == nil {
			return nil, nackf(path+".provider_name", "%q is not a provider", t.ProviderName)
		}
		return &jwt.Requirement{Kind: jwt.RequireProvider, Provider: t.ProviderName}, nil
	case *jwtv3.JwtRequirement_RequiresAny, *jwtv3.JwtRequirement_RequiresAll:
		kind, field, list := jwt.RequireAny, "requires_any", r.GetRequiresAny().GetRequirements()
		if _, all := t.(*jwtv3.JwtRequirement_RequiresAll); all {
			kind, field, list = jwt.RequireAll, "requires_all", r.GetRequiresAll().GetRequirements()
		}
		if len(list) < 2 {
			return nil, nackf(path+"."+field+".requirements", "at least two requirements are required")
		}
		out := &jwt.Requirement{Kind: kind}
		for i, c := range list {
			cr, err := jwtRequirement(fmt.Sprintf("%s.%s.requirements[%d]", path, field, i), c, providers, depth+1)
			if err != nil {
				return nil, err
			}
			out.Children = append(out.Children, cr)
		}
		return out, nil
	case *jwtv3.JwtRequirement_AllowMissing:
		return &jwt.Requirement{Kind: jwt.AllowMissing}, nil
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		return &jwt.Requirement{Kind: jwt.AllowMissingOrFailed}, nil
	}
	return nil, nackf(path, "a requirement is required")
}
