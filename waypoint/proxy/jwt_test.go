package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/zmesh/zmesh/waypoint/config"
)

// TestJWTBeforeRBAC: the JWT filter verifies the token and the RBAC filter
// after it allows on the verified claim, as Istio's RequestAuthentication
// and an AuthorizationPolicy on request.auth.claims do.
func TestJWTBeforeRBAC(t *testing.T) {
	m := newMesh(t, bounds{})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	sign := func(k *ecdsa.PrivateKey, claims map[string]any) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(claims)
		jws, err := s.Sign(b)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := jws.CompactSerialize()
		return tok
	}
	jc := &jwtv3.JwtAuthentication{}
	unmarshalYAML(t, fmt.Sprintf(`
providers:
  origins-0:
    issuer: testing@secure.istio.io
    local_jwks: {inline_string: %q}
    payload_in_metadata: payload
    claim_to_headers: [{header_name: x-jwt-sub, claim_name: sub}]
rules:
- match: {prefix: /}
  requires: {requires_any: {requirements: [{provider_name: origins-0}, {allow_missing: {}}]}}
`, jwks), jc)
	jf, err := config.CompileJWT("jwt", jc)
	if err != nil {
		t.Fatal(err)
	}
	rb := &rbacv3.RBAC{}
	unmarshalYAML(t, `
rules:
  action: ALLOW
  policies:
    ns[default]-policy[admins]-rule[0]:
      permissions: [{any: true}]
      principals: [{metadata: {filter: istio_authn, path: [{key: request.auth.claims}, {key: group}], value: {list_match: {one_of: {string_match: {exact: admin}}}}}}]
`, rb)
	set, err := config.CompileRBAC("rbac", rb)
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshot(t, "v1")
	ch := *s.Chains[vipHTTP]
	ch.HTTPFilters = []config.HTTPFilter{{Name: "envoy.filters.http.jwt_authn", JWT: jf}, {Name: "envoy.filters.http.rbac", RBAC: set}}
	s.Chains[vipHTTP] = &ch
	m.proxy.Update(s)
	c := m.h1Client(vipHTTP)
	exp := time.Now().Add(time.Hour).Unix()

	if res, body := get(t, c, "http://reviews/app"); res.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("no token: %d %q", res.StatusCode, body)
	}
	m.obs.next(t)
	user := sign(key, map[string]any{"iss": "testing@secure.istio.io", "sub": "bob", "exp": exp, "group": "user"})
	if res, body := get(t, c, "http://reviews/app", "Authorization", "Bearer "+user); res.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("without the claim: %d %q", res.StatusCode, body)
	}
	m.obs.next(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := sign(other, map[string]any{"iss": "testing@secure.istio.io", "sub": "alice", "exp": exp, "group": "admin"})
	res, body := get(t, c, "http://reviews/app?x=1", "Authorization", "Bearer "+forged)
	if res.StatusCode != 401 || body != "Jwt verification fails" ||
		res.Header.Get("Www-Authenticate") != `Bearer realm="http://reviews/app", error="invalid_token"` {
		t.Errorf("bad signature: %d %q %q", res.StatusCode, body, res.Header.Get("Www-Authenticate"))
	}
	m.obs.next(t)
	admin := sign(key, map[string]any{"iss": "testing@secure.istio.io", "sub": "alice", "exp": exp, "group": "admin"})
	for len(m.requests) > 0 {
		<-m.requests
	}
	res, body = get(t, c, "http://reviews/app", "Authorization", "Bearer "+admin, "X-Jwt-Sub", "mallory")
	if res.StatusCode != 200 || body != "v1" {
		t.Fatalf("with the claim: %d %q", res.StatusCode, body)
	}
	if rec := m.obs.next(t); rec.PolicyName != "ns[default]-policy[admins]-rule[0]" {
		t.Errorf("deciding policy %q", rec.PolicyName)
	}
	seen := <-m.requests
	if seen.header.Get("Authorization") != "" || seen.header.Values("X-Jwt-Sub")[0] != "alice" || len(seen.header.Values("X-Jwt-Sub")) != 1 {
		t.Errorf("upstream saw Authorization %q, x-jwt-sub %q", seen.header.Get("Authorization"), seen.header.Values("X-Jwt-Sub"))
	}
}
