package jwt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const issuer = "testing@secure.istio.io"

var now = time.Unix(1_800_000_000, 0)

type keyPair struct {
	priv *ecdsa.PrivateKey
	kid  string
}

func newKey(t *testing.T, kid string) keyPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{k, kid}
}

func (k keyPair) jwks(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (k keyPair) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// istioFilter is the filter istiod writes for one jwtRule: the provider,
// or no token at all.
func istioFilter(t *testing.T, p *Provider, jwks string) *Filter {
	t.Helper()
	keys, err := ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	p.Name, p.Keys, p.Issuer = "origins-0", keys, issuer
	if p.ClockSkew == 0 {
		p.ClockSkew = DefaultClockSkew
	}
	return &Filter{
		Providers: map[string]*Provider{p.Name: p},
		Rules: []Rule{{Prefix: "/", Requires: &Requirement{Kind: RequireAny, Children: []*Requirement{
			{Kind: RequireProvider, Provider: p.Name}, {Kind: AllowMissing},
		}}}},
		BypassCORSPreflight: true,
	}
}

func bearer(tok string) http.Header {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+tok)
	return h
}

func TestDecide(t *testing.T) {
	key, other := newKey(t, "k1"), newKey(t, "k1")
	good := map[string]any{"iss": issuer, "sub": "alice", "aud": "web", "exp": now.Add(time.Hour).Unix(),
		"groups": []string{"eng", "ops"}, "group": "admin", "scope": "read write", "nested": map[string]any{"team": "blue"}}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+issuer+`","sub":"alice"}`)) + "."
	tests := []struct {
		name   string
		header http.Header
		path   string
		p      Provider
		want   Status
	}{
		{name: "valid", header: bearer(key.sign(t, good)), want: OK},
		{name: "no token passes", header: http.Header{}, want: OK},
		{name: "expired", header: bearer(key.sign(t, with("exp", now.Add(-2*time.Minute).Unix()))), want: Expired},
		{name: "expired within the clock skew", header: bearer(key.sign(t, with("exp", now.Add(-30*time.Second).Unix()))), want: OK},
		{name: "not yet valid", header: bearer(key.sign(t, with("nbf", now.Add(2*time.Minute).Unix()))), want: NotYetValid},
		{name: "exp not a number", header: bearer(key.sign(t, with("exp", "tomorrow"))), want: PayloadBadJSON},
		{name: "other issuer", header: bearer(key.sign(t, with("iss", "evil"))), want: UnknownIssuer},
		{name: "audience", header: bearer(key.sign(t, good)), p: Provider{Audiences: []string{"web"}}, want: OK},
		{name: "wrong audience", header: bearer(key.sign(t, good)), p: Provider{Audiences: []string{"api"}}, want: AudienceNotAllowed},
		{name: "bad signature", header: bearer(other.sign(t, good)), want: VerificationFail},
		{name: "other kid", header: bearer(newKey(t, "k2").sign(t, good)), want: KidAlgMismatch},
		{name: "alg none refused", header: bearer(none), want: AlgNotImplemented},
		{name: "garbage", header: bearer("deadbeef"), want: BadFormat},
		{name: "oversized", header: bearer(strings.Repeat("a", MaxTokenBytes) + ".b.c"), want: BadFormat},
		{name: "token in a query parameter", header: http.Header{}, path: "/?access_token=" + key.sign(t, with("exp", now.Add(-time.Hour).Unix())), want: Expired},
		{name: "fromParams", header: http.Header{}, path: "/?my_token=" + other.sign(t, good), p: Provider{FromParams: []string{"my_token"}}, want: VerificationFail},
		{name: "fromHeaders with prefix", header: http.Header{"X-Jwt": {"Token " + other.sign(t, good)}},
			p: Provider{FromHeaders: []HeaderLocation{{Name: "X-Jwt", Prefix: "Token "}}}, want: VerificationFail},
		{name: "fromHeaders ignores Authorization", header: bearer(other.sign(t, good)),
			p: Provider{FromHeaders: []HeaderLocation{{Name: "X-Jwt", Prefix: "Token "}}}, want: OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			f := istioFilter(t, &p, key.jwks(t))
			path := tc.path
			if path == "" {
				path = "/api"
			}
			res := Decide(f, &Request{Method: "GET", Path: path, Header: tc.header, URL: "http://web/api"}, now)
			if res.Status != tc.want {
				t.Fatalf("status %q, want %q", res.Status, tc.want)
			}
			if tc.want != OK {
				if !strings.HasPrefix(res.WWWAuthenticate, `Bearer realm="http://web/api"`) {
					t.Errorf("www-authenticate %q", res.WWWAuthenticate)
				}
				if res.Principal != "" {
					t.Errorf("principal %q on a refusal", res.Principal)
				}
			}
		})
	}
}

func TestStatusReply(t *testing.T) {
	if VerificationFail.String() != "Jwt verification fails" || VerificationFail.Code() != 401 {
		t.Errorf("%q %d", VerificationFail.String(), VerificationFail.Code())
	}
	if AudienceNotAllowed.Code() != 403 {
		t.Errorf("audience code %d", AudienceNotAllowed.Code())
	}
}

func TestVerifiedToken(t *testing.T) {
	key := newKey(t, "k1")
	tok := key.sign(t, map[string]any{"iss": issuer, "sub": "alice", "exp": now.Add(time.Hour).Unix(),
		"groups": []string{"eng", "ops"}, "group": "admin", "scope": "read write", "nested": map[string]any{"team": "blue"}})
	p := Provider{ClaimToHeaders: []ClaimToHeader{{Header: "X-Jwt-Sub", Claim: "sub"}, {Header: "X-Jwt-Team", Claim: "nested.team"}},
		ForwardPayloadHeader: "X-Jwt-Payload", SpaceDelimitedClaims: []string{"scope"}}
	f := istioFilter(t, &p, key.jwks(t))
	h := bearer(tok)
	h.Set("X-Jwt-Sub", "forged")
	res := Decide(f, &Request{Method: "GET", Path: "/", Header: h}, now)
	if res.Status != OK {
		t.Fatalf("status %v", res.Status)
	}
	if res.Principal != issuer+"/alice" {
		t.Errorf("principal %q", res.Principal)
	}
	claims := map[string][]string{}
	for _, c := range res.Claims {
		claims[strings.Join(c.Path, ".")] = c.Values
	}
	for k, want := range map[string][]string{"groups": {"eng", "ops"}, "group": {"admin"}, "scope": {"read", "write"}, "nested.team": {"blue"}} {
		if !slices.Equal(claims[k], want) {
			t.Errorf("claim %s = %q, want %q", k, claims[k], want)
		}
	}
	// The forged copies go, the token goes (forward is false), and the
	// verified values come in.
	for _, want := range []string{"X-Jwt-Payload", "X-Jwt-Sub", "X-Jwt-Team", "Authorization"} {
		if !slices.Contains(res.RemoveHeaders, want) {
			t.Errorf("%s not removed: %q", want, res.RemoveHeaders)
		}
	}
	set := map[string]string{}
	for _, kv := range res.SetHeaders {
		set[kv[0]] = kv[1]
	}
	if set["X-Jwt-Sub"] != "alice" || set["X-Jwt-Team"] != "blue" || set["X-Jwt-Payload"] == "" {
		t.Errorf("set headers %q", res.SetHeaders)
	}

	p.Forward = true
	if res := Decide(f, &Request{Method: "GET", Path: "/", Header: bearer(tok)}, now); slices.Contains(res.RemoveHeaders, "Authorization") {
		t.Errorf("forwardOriginalToken: token removed")
	}
	// A failed token yields nothing, and no header is set.
	res = Decide(f, &Request{Method: "GET", Path: "/", Header: bearer(tok)}, now.Add(2*time.Hour))
	if res.Status != Expired || len(res.SetHeaders) > 0 || len(res.Claims) > 0 {
		t.Errorf("expired: %+v", res)
	}
}

func TestParseJWKS(t *testing.T) {
	key := newKey(t, "k1")
	if _, err := ParseJWKS(key.jwks(t)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "{", `{"keys":"x"}`, strings.Repeat(" ", MaxJWKSBytes+1)} {
		if _, err := ParseJWKS(bad); err == nil {
			t.Errorf("%.20q accepted", bad)
		}
	}
	many := `{"keys":[` + strings.Repeat(`{"kty":"oct","k":"AAAA"},`, MaxJWKSKeys) + `{"kty":"oct","k":"AAAA"}]}`
	if _, err := ParseJWKS(many); err == nil {
		t.Error("too many keys accepted")
	}
	if _, err := ParseJWKS(`{"keys":[{"kty":"XYZ"}]}`); err == nil {
		t.Error("a set of unknown keys accepted")
	}
}
