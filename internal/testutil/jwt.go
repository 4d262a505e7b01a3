package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// JWTIssuer signs ES256 tokens as an identity provider would, for tests of
// RequestAuthentication: its JWKS goes into the policy, its tokens into
// requests. Two issuers made with the same name and key ID stand for the
// real one and a forger.
type JWTIssuer struct {
	Issuer, KeyID string
	key           *ecdsa.PrivateKey
}

// NewJWTIssuer makes an issuer with a fresh P-256 key.
func NewJWTIssuer(t testing.TB, issuer, keyID string) *JWTIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &JWTIssuer{Issuer: issuer, KeyID: keyID, key: key}
}

// JWKS is the issuer's public key set, as a jwks field holds it.
func (i *JWTIssuer) JWKS(t testing.TB) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.key.PublicKey, KeyID: i.KeyID, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Token signs claims with iss set to the issuer and exp an hour ahead.
func (i *JWTIssuer) Token(t testing.TB, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]any{"iss": i.Issuer, "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		all[k] = v
	}
	b, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
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
