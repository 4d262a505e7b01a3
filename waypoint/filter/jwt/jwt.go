// Package jwt is the waypoint's JWT authentication filter: Envoy's
// envoy.filters.http.jwt_authn compiled (by waypoint/config) into a Filter,
// and Decide, the pure verification of one request's tokens at a given
// time.
//
// Istio writes one provider per RequestAuthentication jwtRule and a
// requirement that lets a request without a token pass and fails one whose
// token does not verify: a token is never ignored. A verified token's
// issuer/subject and claims are what the RBAC filters after it match
// requestPrincipals and request.auth.claims on. The keys are always inline
// (local_jwks): zmeshd fetches jwksUri itself, so the waypoint needs no
// egress.
//
// Decide does not touch the request: it returns the header changes Envoy
// makes (the token removed unless forwarded, claims and payload copied to
// headers, client-sent copies of those headers dropped) and the local reply
// when verification fails, and the proxy applies them.
package jwt

import (
	"bytes"
	"cmp"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// What the proxy answers and logs, as Envoy does.
const (
	FilterName = "envoy.filters.http.jwt_authn"
	// DefaultClockSkew is Envoy's clock_skew_seconds default, allowed on
	// both exp and nbf.
	DefaultClockSkew = 60 * time.Second
	// MaxTokenBytes bounds a token the filter will parse; a longer one
	// fails as malformed before any decoding.
	MaxTokenBytes = 16 << 10
	// maxClaims and maxClaimDepth bound what one payload can make the
	// filter hold for the RBAC filters.
	maxClaims     = 256
	maxClaimDepth = 8
	maxListValues = 256
)

// Status is the outcome of verifying one token, as Envoy's jwt_verify_lib
// names it; its String is the body of the 401 (403 for audiences).
type Status uint8

const (
	OK Status = iota
	Missing
	BadFormat
	HeaderBadAlg
	AlgNotImplemented
	PayloadBadJSON
	NotYetValid
	Expired
	UnknownIssuer
	AudienceNotAllowed
	KidAlgMismatch
	NoValidKeys
	VerificationFail
)

var statusText = [...]string{
	OK:                 "OK",
	Missing:            "Jwt is missing",
	BadFormat:          "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
	HeaderBadAlg:       "Jwt header [alg] field is required and must be a string",
	AlgNotImplemented:  "Jwt header [alg] is not supported",
	PayloadBadJSON:     "Jwt payload is an invalid JSON",
	NotYetValid:        "Jwt not yet valid",
	Expired:            "Jwt is expired",
	UnknownIssuer:      "Jwt issuer is not configured",
	AudienceNotAllowed: "Audiences in Jwt are not allowed",
	KidAlgMismatch:     "Jwks doesn't have key to match kid or alg from Jwt",
	NoValidKeys:        "Jwks doesn't have valid keys",
	VerificationFail:   "Jwt verification fails",
}

func (s Status) String() string {
	if int(s) < len(statusText) {
		return statusText[s]
	}
	return "Jwt verification fails"
}

// Code is the HTTP status of a refusal: 403 for an audience the provider
// does not accept, 401 otherwise.
func (s Status) Code() int {
	if s == AudienceNotAllowed {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// Filter is one compiled jwt_authn filter. It is never modified after
// compilation.
type Filter struct {
	// Providers by name.
	Providers map[string]*Provider
	// Rules are tried in order; the first whose match the request's path
	// meets decides what is required. No rule: nothing is required.
	Rules []Rule
	// BypassCORSPreflight lets CORS preflight requests through unverified.
	BypassCORSPreflight bool
}

// Rule is a requirement for the requests whose path starts with Prefix
// (or is Path).
type Rule struct {
	Prefix, Path string
	// Requires is nil when the rule requires nothing.
	Requires *Requirement
}

// RequirementKind says what a Requirement is.
type RequirementKind uint8

const (
	RequireProvider RequirementKind = iota
	RequireAny
	RequireAll
	// AllowMissing passes a request with no token at all; a token that
	// does not verify still fails it.
	AllowMissing
	// AllowMissingOrFailed passes every request; a token that verifies
	// still yields its principal.
	AllowMissingOrFailed
)

// Requirement is Envoy's JwtRequirement.
type Requirement struct {
	Kind     RequirementKind
	Provider string // RequireProvider
	Children []*Requirement
}

// Provider is one issuer's configuration.
type Provider struct {
	Name      string
	Issuer    string
	Audiences []string
	Keys      []jose.JSONWebKey
	// FromHeaders and FromParams are where its token is looked for;
	// both empty means Envoy's defaults: "Authorization: Bearer <token>"
	// and the access_token query parameter.
	FromHeaders []HeaderLocation
	FromParams  []string
	// Forward keeps the token in the request; by default it is removed
	// once verified.
	Forward bool
	// ForwardPayloadHeader, when set, carries the base64url payload
	// upstream.
	ForwardPayloadHeader string
	ClaimToHeaders       []ClaimToHeader
	ClockSkew            time.Duration
	// SpaceDelimitedClaims are split on spaces for the RBAC filters, as
	// Istio normalises "scope" and "permission".
	SpaceDelimitedClaims []string
}

// HeaderLocation is a header a token is read from, after a prefix
// ("Bearer ").
type HeaderLocation struct {
	Name   string // canonical form
	Prefix string
}

// ClaimToHeader copies a claim ("sub", or "a.b" for a nested one) to a
// request header.
type ClaimToHeader struct {
	Header string // canonical form
	Claim  string
}

// Request is what the filter reads of a request.
type Request struct {
	Method string
	// Path is the request target with its query.
	Path   string
	Header http.Header
	// URL is scheme://authority/path without the query, for the
	// WWW-Authenticate realm.
	URL string
}

// Result is the filter's decision for one request.
type Result struct {
	// Status is OK when the request may proceed; otherwise the request is
	// refused with Status.Code() and body Status.String().
	Status Status
	// WWWAuthenticate is the header a refusal carries.
	WWWAuthenticate string
	// Principal is the verified token's "iss/sub" (empty without one),
	// Claims its claims, flattened for RBAC.
	Principal string
	Claims    []Claim
	// RemoveHeaders and SetHeaders are the request's header changes, in
	// this order.
	RemoveHeaders []string
	SetHeaders    [][2]string
}

// Claim is one claim: its path (["groups"], or ["a", "b"] for a nested
// claim) and its string values (a string is a list of one).
type Claim struct {
	Path   []string
	Values []string
}

// token is one token found in a request, with where it was.
type token struct {
	value string
	// header is the header it came from ("" for a query parameter).
	header string
}

// outcome of verifying one provider's token.
type outcome struct {
	status  Status
	payload map[string]any
	raw     []byte
	tok     token
	p       *Provider
}

// verification holds the tokens of one request, each verified once.
type verification struct {
	f    *Filter
	req  *Request
	now  time.Time
	done map[*Provider]*outcome
	// ok are the providers whose token verified, in verification order.
	ok []*outcome
	// anyToken: some provider found a token in the request.
	anyToken bool
}

// Decide verifies the request's tokens as the filter requires, at now.
func Decide(f *Filter, req *Request, now time.Time) Result {
	var res Result
	// Headers the filter writes are never taken from the client.
	for _, p := range f.sortedProviders() {
		if p.ForwardPayloadHeader != "" {
			res.RemoveHeaders = append(res.RemoveHeaders, p.ForwardPayloadHeader)
		}
		for _, c := range p.ClaimToHeaders {
			res.RemoveHeaders = append(res.RemoveHeaders, c.Header)
		}
	}
	if f.BypassCORSPreflight && req.Method == http.MethodOptions && req.Header.Get("Origin") != "" &&
		req.Header.Get("Access-Control-Request-Method") != "" {
		return res
	}
	var rule *Rule
	path := req.Path
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for i := range f.Rules {
		r := &f.Rules[i]
		if (r.Path != "" && path == r.Path) || (r.Path == "" && strings.HasPrefix(path, r.Prefix)) {
			rule = r
			break
		}
	}
	if rule == nil || rule.Requires == nil {
		return res
	}
	v := &verification{f: f, req: req, now: now, done: map[*Provider]*outcome{}}
	st := v.check(rule.Requires)
	if st != OK {
		res.Status = st
		res.WWWAuthenticate = `Bearer realm="` + req.URL + `"`
		if st != Missing {
			res.WWWAuthenticate += `, error="invalid_token"`
		}
		return res
	}
	for _, o := range v.ok {
		p := o.p
		if res.Principal == "" {
			res.Principal, res.Claims = principal(o.payload), flatten(o.payload, p.SpaceDelimitedClaims)
		}
		if !p.Forward && o.tok.header != "" {
			res.RemoveHeaders = append(res.RemoveHeaders, o.tok.header)
		}
		if p.ForwardPayloadHeader != "" {
			res.SetHeaders = append(res.SetHeaders, [2]string{p.ForwardPayloadHeader, base64.RawURLEncoding.EncodeToString(o.raw)})
		}
		for _, c := range p.ClaimToHeaders {
			if s, ok := claimString(o.payload, c.Claim); ok {
				res.SetHeaders = append(res.SetHeaders, [2]string{c.Header, s})
			}
		}
	}
	return res
}

func (f *Filter) sortedProviders() []*Provider {
	// Name order, so that the header changes are stable.
	return slices.SortedFunc(maps.Values(f.Providers), func(a, b *Provider) int { return cmp.Compare(a.Name, b.Name) })
}

// check evaluates a requirement; OK or the failure to report. A group
// reports its last child's failure, as Envoy's verifiers complete.
func (v *verification) check(r *Requirement) Status {
	switch r.Kind {
	case RequireProvider:
		p := v.f.Providers[r.Provider]
		if p == nil {
			return VerificationFail
		}
		return v.provider(p).status
	case RequireAny:
		st := VerificationFail
		for _, c := range r.Children {
			if st = v.check(c); st == OK {
				return OK
			}
		}
		return st
	case RequireAll:
		for _, c := range r.Children {
			if st := v.check(c); st != OK {
				return st
			}
		}
		return OK
	case AllowMissing, AllowMissingOrFailed:
		// Every provider's token is verified: a token that fails makes
		// AllowMissing fail with its status; none at all passes.
		st := OK
		for _, p := range v.f.sortedProviders() {
			o := v.provider(p)
			if o.status != OK && o.status != Missing && o.status != UnknownIssuer {
				st = o.status
			}
		}
		if r.Kind == AllowMissingOrFailed {
			return OK
		}
		if st == OK && v.anyToken && len(v.ok) == 0 {
			// A token no provider claims (another issuer).
			return UnknownIssuer
		}
		return st
	}
	return VerificationFail
}

// provider verifies the provider's token, once per request.
func (v *verification) provider(p *Provider) *outcome {
	if o := v.done[p]; o != nil {
		return o
	}
	o := &outcome{p: p, status: Missing}
	v.done[p] = o
	toks := v.tokens(p)
	if len(toks) == 0 {
		return o
	}
	v.anyToken = true
	// Each token found is tried; the first that verifies wins, else the
	// last failure is reported (Envoy tries them in order).
	for _, t := range toks {
		st, payload, raw := verify(p, t.value, v.now)
		o.status, o.tok = st, t
		if st == OK {
			o.payload, o.raw = payload, raw
			v.ok = append(v.ok, o)
			break
		}
	}
	return o
}

// tokens finds the provider's tokens in the request.
func (v *verification) tokens(p *Provider) []token {
	var out []token
	headers, params := p.FromHeaders, p.FromParams
	if len(headers) == 0 && len(params) == 0 {
		headers = []HeaderLocation{{Name: "Authorization", Prefix: "Bearer "}}
		params = []string{"access_token"}
	}
	for _, h := range headers {
		for _, val := range v.req.Header.Values(h.Name) {
			if h.Prefix != "" {
				// Envoy matches the prefix exactly, then trims spaces.
				i := strings.Index(val, h.Prefix)
				if i < 0 {
					continue
				}
				val = val[i+len(h.Prefix):]
			}
			val = strings.TrimSpace(val)
			if val != "" {
				out = append(out, token{value: val, header: h.Name})
			}
		}
	}
	if len(params) > 0 {
		if i := strings.IndexByte(v.req.Path, '?'); i >= 0 {
			q, _ := url.ParseQuery(v.req.Path[i+1:])
			for _, name := range params {
				for _, val := range q[name] {
					if val != "" {
						out = append(out, token{value: val})
					}
				}
			}
		}
	}
	return out
}

// Algorithms a token may be signed with. "none" is not among them, so an
// unsigned token never verifies.
var algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.HS256, jose.HS384, jose.HS512, jose.EdDSA,
}

// verify checks one token against the provider at now.
func verify(p *Provider, tok string, now time.Time) (Status, map[string]any, []byte) {
	if len(tok) > MaxTokenBytes || strings.Count(tok, ".") != 2 {
		return BadFormat, nil, nil
	}
	// The header is read before the signature library sees the token, to
	// tell an unsupported algorithm from a malformed token as Envoy does.
	hdrB64, _, _ := strings.Cut(tok, ".")
	hdrJSON, err := base64.RawURLEncoding.DecodeString(hdrB64)
	if err != nil {
		return BadFormat, nil, nil
	}
	var hdr struct {
		Alg any    `json:"alg"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal(hdrJSON, &hdr) != nil {
		return BadFormat, nil, nil
	}
	alg, ok := hdr.Alg.(string)
	if !ok || alg == "" {
		return HeaderBadAlg, nil, nil
	}
	if !slices.Contains(algorithms, jose.SignatureAlgorithm(alg)) {
		return AlgNotImplemented, nil, nil
	}
	jws, err := jose.ParseSignedCompact(tok, algorithms)
	if err != nil || len(jws.Signatures) != 1 {
		return BadFormat, nil, nil
	}
	raw := jws.UnsafePayloadWithoutVerification()
	var payload map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&payload) != nil || payload == nil {
		return PayloadBadJSON, nil, nil
	}
	// Claims first, as Envoy checks them before the signature.
	iss, _ := payload["iss"].(string)
	if p.Issuer != "" && iss != p.Issuer {
		return UnknownIssuer, nil, nil
	}
	skew := p.ClockSkew
	nbf, ok := numericDate(payload, "nbf")
	if !ok {
		return PayloadBadJSON, nil, nil
	}
	if !nbf.IsZero() && now.Add(skew).Before(nbf) {
		return NotYetValid, nil, nil
	}
	exp, ok := numericDate(payload, "exp")
	if !ok {
		return PayloadBadJSON, nil, nil
	}
	if !exp.IsZero() && !now.Add(-skew).Before(exp) {
		return Expired, nil, nil
	}
	if len(p.Audiences) > 0 && !audienceAllowed(payload["aud"], p.Audiences) {
		return AudienceNotAllowed, nil, nil
	}
	if len(p.Keys) == 0 {
		return NoValidKeys, nil, nil
	}
	tried := false
	for i := range p.Keys {
		k := &p.Keys[i]
		if hdr.Kid != "" && k.KeyID != "" && k.KeyID != hdr.Kid {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		if !keyFits(k.Key, alg) {
			continue
		}
		tried = true
		if _, err := jws.Verify(k.Key); err == nil {
			return OK, payload, raw
		}
	}
	if !tried {
		return KidAlgMismatch, nil, nil
	}
	return VerificationFail, nil, nil
}

// keyFits says whether a key's type can verify alg, so that, for
// example, an RSA public key is never used as an HMAC secret.
func keyFits(key any, alg string) bool {
	switch key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return strings.HasPrefix(alg, "ES")
	case ed25519.PublicKey:
		return alg == "EdDSA"
	case []byte:
		return strings.HasPrefix(alg, "HS")
	}
	return false
}

// numericDate reads exp or nbf: the zero time when absent, false when it
// is not a number (the token is then refused, never taken as unbounded).
func numericDate(payload map[string]any, claim string) (time.Time, bool) {
	v, present := payload[claim]
	if !present {
		return time.Time{}, true
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return time.Time{}, false
	}
	if f > float64(math.MaxInt64/int64(time.Second)) {
		f = float64(math.MaxInt64 / int64(time.Second))
	}
	if f < 1 {
		f = 1 // the zero time means absent
	}
	return time.Unix(int64(f), 0), true
}

func audienceAllowed(aud any, allowed []string) bool {
	var auds []string
	switch a := aud.(type) {
	case string:
		auds = []string{a}
	case []any:
		for _, e := range a {
			if s, ok := e.(string); ok {
				auds = append(auds, s)
			}
		}
	}
	for _, a := range auds {
		for _, w := range allowed {
			// Envoy ignores a trailing slash and the scheme's case.
			if strings.TrimSuffix(a, "/") == strings.TrimSuffix(w, "/") {
				return true
			}
		}
	}
	return false
}

func principal(payload map[string]any) string {
	iss, _ := payload["iss"].(string)
	sub, _ := payload["sub"].(string)
	if iss == "" || sub == "" {
		return ""
	}
	return iss + "/" + sub
}

// flatten lists the payload's claims for RBAC: strings and lists of
// strings, nested objects by path; other values are left out (a string
// matcher never matches them in Envoy either). Bounded in count and depth.
func flatten(payload map[string]any, spaceDelimited []string) []Claim {
	var out []Claim
	var walk func(path []string, v any)
	walk = func(path []string, v any) {
		if len(out) >= maxClaims || len(path) > maxClaimDepth {
			return
		}
		switch t := v.(type) {
		case string:
			vals := []string{t}
			if len(path) == 1 && slices.Contains(spaceDelimited, path[0]) {
				vals = strings.Fields(t)
			}
			out = append(out, Claim{Path: path, Values: vals})
		case []any:
			var vals []string
			for _, e := range t {
				if s, ok := e.(string); ok && len(vals) < maxListValues {
					vals = append(vals, s)
				}
			}
			out = append(out, Claim{Path: path, Values: vals})
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(t)) {
				walk(append(path[:len(path):len(path)], k), t[k])
			}
		}
	}
	walk(nil, payload)
	return out
}

// claimString is a claim's value for a header: strings, numbers and
// booleans, as Envoy copies them; a nested claim by "a.b".
func claimString(payload map[string]any, claim string) (string, bool) {
	var v any = payload
	for _, part := range strings.Split(claim, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[part]; !ok {
			return "", false
		}
	}
	switch t := v.(type) {
	case string:
		return t, true
	case json.Number:
		return t.String(), true
	case bool:
		return strconv.FormatBool(t), true
	}
	return "", false
}
