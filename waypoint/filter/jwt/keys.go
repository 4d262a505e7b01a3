package jwt

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds of a key set: what a JWKS may make the waypoint (and zmeshd,
// which validates what it fetches with the same function) hold.
const (
	MaxJWKSBytes = 256 << 10
	MaxJWKSKeys  = 64
)

// ErrNoKeys is returned by ParseJWKS for a key set with no key the filter
// can verify with.
var ErrNoKeys = errors.New("no usable key")

// ParseJWKS reads a JSON Web Key Set. Keys of a type the filter cannot use
// are skipped, as Envoy skips them; private keys are reduced to their
// public part. A set with no usable key is ErrNoKeys (wrapped).
func ParseJWKS(s string) ([]jose.JSONWebKey, error) {
	if len(s) > MaxJWKSBytes {
		return nil, fmt.Errorf("%d bytes, more than %d", len(s), MaxJWKSBytes)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	if len(set.Keys) > MaxJWKSKeys {
		return nil, fmt.Errorf("%d keys, more than %d", len(set.Keys), MaxJWKSKeys)
	}
	var out []jose.JSONWebKey
	var skipped error
	for i, raw := range set.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			skipped = fmt.Errorf("keys[%d]: %v", i, err)
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if _, symmetric := k.Key.([]byte); !symmetric && !k.IsPublic() {
			k = k.Public()
		}
		if !usable(k.Key) {
			skipped = fmt.Errorf("keys[%d]: key type not usable for signatures", i)
			continue
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		if skipped != nil {
			return nil, fmt.Errorf("%w (%v)", ErrNoKeys, skipped)
		}
		return nil, ErrNoKeys
	}
	return out, nil
}

// usable says whether the filter can verify signatures with key.
func usable(key any) bool {
	switch key.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey, []byte:
		return true
	}
	return false
}
