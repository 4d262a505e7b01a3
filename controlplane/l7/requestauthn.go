package l7

import (
	"cmp"
	"fmt"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/emptypb"
	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/zmesh/zmesh/controlplane/jwks"
)

const (
	jwtName = "envoy.filters.http.jwt_authn"
	// jwtPayloadKey is where istiod has the filter put a verified payload.
	jwtPayloadKey = "payload"
	// noKeys is the key set of an issuer whose keys are not known: every
	// token it signed fails, as with istiod's placeholder set.
	noKeys = `{"keys":[]}`
)

// JWKSResolver returns the key set zmeshd fetched for a jwksUri: the last
// good set ("" when none) and why the last fetch failed (nil when it did
// not).
type JWKSResolver func(uri string) (string, error)

// requestAuthn is a RequestAuthentication attached to this waypoint, its
// rules translated once.
type requestAuthn struct {
	ref   ObjectRef
	all   bool
	hosts map[string]bool
	rules []*jwtRule
}

// jwtRule is one translated jwtRule.
type jwtRule struct {
	issuer   string
	provider *jwtv3.JwtProvider
}

// requestAuthentications finds the RequestAuthentications attached to this
// waypoint with targetRefs (or targetRef), as istiod attaches them to a
// waypoint: to its Gateway, its GatewayClass from the root namespace, or a
// bound Service. Those without targetRefs apply to sidecars and gateways
// selected by labels, never to a waypoint.
func (b *builder) requestAuthentications() {
	bound := map[[2]string]string{}
	for _, info := range b.bound {
		bound[[2]string{info.svc.Namespace, info.svc.Name}] = info.host
	}
	for _, ra := range b.snap.RequestAuthentications {
		if ra == nil || (len(ra.Spec.TargetRefs) == 0 && ra.Spec.TargetRef == nil) {
			continue
		}
		ref := ObjectRef{"RequestAuthentication", ra.Namespace, ra.Name}
		// The attachment rules are the AuthorizationPolicy's: attach reads
		// only the policy's namespace.
		scope := &authzPolicy{ref: ref, hosts: map[string]bool{}}
		owner := &securityv1.AuthorizationPolicy{}
		owner.Namespace = ra.Namespace
		refs, paths := ra.Spec.TargetRefs, make([]string, 0, len(ra.Spec.TargetRefs)+1)
		for i := range refs {
			paths = append(paths, fmt.Sprintf("spec.targetRefs[%d]", i))
		}
		if ra.Spec.TargetRef != nil {
			refs = append(refs[:len(refs):len(refs)], ra.Spec.TargetRef)
			paths = append(paths, "spec.targetRef")
		}
		for i, tr := range refs {
			b.attach(scope, owner, tr, paths[i], bound)
		}
		if !scope.all && len(scope.hosts) == 0 {
			continue
		}
		a := &requestAuthn{ref: ref, all: scope.all, hosts: scope.hosts}
		for i, r := range ra.Spec.JwtRules {
			if jr := b.jwtRule(ref, fmt.Sprintf("spec.jwtRules[%d]", i), r); jr != nil {
				a.rules = append(a.rules, jr)
			}
		}
		b.authn = append(b.authn, a)
	}
}

// jwtRule translates one jwtRule into a provider, as istiod does; nil
// when it cannot be (its tokens then fail as of an unknown issuer).
func (b *builder) jwtRule(ref ObjectRef, at string, r *securityapi.JWTRule) *jwtRule {
	if r == nil {
		return nil
	}
	if r.Issuer == "" {
		b.problem(ref, at+".issuer", "required; the rule is left out, so tokens fail as of an unknown issuer")
		return nil
	}
	p := &jwtv3.JwtProvider{
		Issuer:               r.Issuer,
		Audiences:            r.Audiences,
		Forward:              r.ForwardOriginalToken,
		ForwardPayloadHeader: r.OutputPayloadToHeader,
		PayloadInMetadata:    jwtPayloadKey,
		FromParams:           r.FromParams,
		NormalizePayloadInMetadata: &jwtv3.JwtProvider_NormalizePayload{
			SpaceDelimitedClaims: spaceDelimited(r.SpaceDelimitedClaims),
		},
	}
	if h := r.OutputPayloadToHeader; h != "" && !validHeaderName(h) {
		b.problem(ref, at+".outputPayloadToHeader", fmt.Sprintf("%q is not a header name; ignored", h))
		p.ForwardPayloadHeader = ""
	}
	for i, c := range r.OutputClaimToHeaders {
		if c == nil || !validHeaderName(c.Header) || c.Claim == "" {
			b.problem(ref, fmt.Sprintf("%s.outputClaimToHeaders[%d]", at, i), "needs a header name and a claim; ignored")
			continue
		}
		p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: c.Header, ClaimName: c.Claim})
	}
	for i, h := range r.FromHeaders {
		if h == nil || !validHeaderName(h.Name) {
			b.problem(ref, fmt.Sprintf("%s.fromHeaders[%d].name", at, i), "is not a header name; ignored")
			continue
		}
		p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.Name, ValuePrefix: h.Prefix})
	}
	if len(r.FromCookies) > 0 {
		b.problem(ref, at+".fromCookies", "not supported by the waypoint: a token in a cookie is not read, so such a request counts as one without a token")
	}
	if r.Timeout != nil {
		b.problem(ref, at+".timeout", fmt.Sprintf("not supported; zmeshd fetches key sets with a %s timeout", jwks.DefaultTimeout))
	}
	set := noKeys
	switch {
	case r.Jwks != "":
		if err := jwks.Validate(r.Jwks); err != nil {
			b.problem(ref, at+".jwks", fmt.Sprintf("%v; every token of issuer %s fails", err, r.Issuer))
		} else {
			set = r.Jwks
		}
	case r.JwksUri != "":
		var got string
		var err error = jwks.ErrNotFetched
		if b.opts.JWKS != nil {
			got, err = b.opts.JWKS(r.JwksUri)
		}
		switch {
		case got == "":
			b.problem(ref, at+".jwksUri", fmt.Sprintf("no key set: %v; every token of issuer %s fails until one is fetched", err, r.Issuer))
		case err != nil:
			b.problem(ref, at+".jwksUri", fmt.Sprintf("refresh failed: %v; the last key set fetched is used", err))
			set = got
		default:
			set = got
		}
	default:
		b.problem(ref, at+".jwksUri", fmt.Sprintf("neither jwks nor jwksUri: OpenID discovery of the issuer is not supported; every token of issuer %s fails", r.Issuer))
	}
	p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: set}}}
	return &jwtRule{issuer: r.Issuer, provider: p}
}

// spaceDelimited is istiod's list of claims split on spaces: "permission"
// and "scope" always, with the rule's own, sorted.
func spaceDelimited(extra []string) []string {
	out := append([]string{"permission", "scope"}, extra...)
	slices.Sort(out)
	return slices.Compact(out)
}

// jwtFilters is the envoy.filters.http.jwt_authn filter of the HTTP chains
// of host (none when no RequestAuthentication applies), which goes before
// the RBAC filters: providers origins-<i> by issuer order, and istiod's
// requirement, under which a request without a token passes and one whose
// token does not verify is refused.
func (b *builder) jwtFilters(host string) []*hcmv3.HttpFilter {
	var rules []*jwtRule
	for _, a := range b.authn {
		if !a.all && !a.hosts[host] {
			continue
		}
		b.accepted[a.ref] = true
		rules = append(rules, a.rules...)
	}
	if len(rules) == 0 {
		return nil
	}
	slices.SortStableFunc(rules, func(x, y *jwtRule) int { return cmp.Compare(x.issuer, y.issuer) })
	cfg := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}, BypassCorsPreflight: true}
	var inner, outer []*jwtv3.JwtRequirement
	for i, r := range rules {
		name := fmt.Sprintf("origins-%d", i)
		cfg.Providers[name] = r.provider
		byName := &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}}
		inner = append(inner, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{
			Requirements: []*jwtv3.JwtRequirement{byName, {RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}}},
		}}})
		outer = append(outer, byName)
	}
	req := inner[0]
	if len(inner) > 1 {
		// Any one provider's token, or for every provider its valid
		// token or none: providers sharing a header each see the others'
		// tokens, which the first branch lets through.
		outer = append(outer, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAll{RequiresAll: &jwtv3.JwtRequirementAndList{Requirements: inner}}})
		req = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: outer}}}
	}
	cfg.Rules = []*jwtv3.RequirementRule{{
		Match:           &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: req},
	}}
	return []*hcmv3.HttpFilter{{Name: jwtName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: stableAny(cfg)}}}
}
