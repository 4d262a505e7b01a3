package l7

import (
	"errors"

	"github.com/zmesh/zmesh/controlplane/jwks"
)

// goldenKeys is a key set the golden tests' JWKS resolver serves.
const goldenKeys = `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"fetched"}]}`

// goldenJWKS stands for zmeshd's fetcher in the golden tests: one URI
// fetched, one whose refresh failed after a success, one never fetched.
func goldenJWKS(uri string) (string, error) {
	switch uri {
	case "https://keys.example.com/jwks.json":
		return goldenKeys, nil
	case "https://flaky.example.com/jwks.json":
		return goldenKeys, errors.New("fetch: status 503")
	}
	return "", jwks.ErrNotFetched
}
