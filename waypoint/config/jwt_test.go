package config

import (
	"errors"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/zmesh/zmesh/waypoint/filter/jwt"
)

const testJWKS = `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}`

// istiodJWT is the filter istiod writes for one jwtRule.
func istiodJWT() *jwtv3.JwtAuthentication {
	return &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"origins-0": {
			Issuer: "testing@secure.istio.io", Audiences: []string{"web"},
			JwksSourceSpecifier:        &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: testJWKS}}},
			FromHeaders:                []*jwtv3.JwtHeader{{Name: "x-jwt", ValuePrefix: "Token "}},
			FromParams:                 []string{"token"},
			PayloadInMetadata:          "payload",
			ClaimToHeaders:             []*jwtv3.JwtClaimToHeader{{HeaderName: "x-sub", ClaimName: "sub"}},
			NormalizePayloadInMetadata: &jwtv3.JwtProvider_NormalizePayload{SpaceDelimitedClaims: []string{"permission", "scope"}},
		}},
		Rules: []*jwtv3.RequirementRule{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
				RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: []*jwtv3.JwtRequirement{
					{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "origins-0"}},
					{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}},
				}},
			}}},
		}},
		BypassCorsPreflight: true,
	}
}

func TestCompileJWT(t *testing.T) {
	f, err := CompileJWT("l", istiodJWT())
	if err != nil {
		t.Fatal(err)
	}
	p := f.Providers["origins-0"]
	if p == nil || len(p.Keys) != 1 || p.ClockSkew != jwt.DefaultClockSkew || p.FromHeaders[0].Name != "X-Jwt" ||
		p.ClaimToHeaders[0].Header != "X-Sub" || len(f.Rules) != 1 || f.Rules[0].Requires.Kind != jwt.RequireAny {
		t.Fatalf("compiled %+v", f)
	}
}

func TestCompileJWTNack(t *testing.T) {
	tests := []struct {
		name, path string
		mutate     func(*jwtv3.JwtAuthentication)
	}{
		{"remote jwks", `providers["origins-0"].remote_jwks`, func(c *jwtv3.JwtAuthentication) {
			c.Providers["origins-0"].JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{HttpUri: &corev3.HttpUri{Uri: "https://example.com/jwks"}}}
		}},
		{"clear route cache", `providers["origins-0"].clear_route_cache`, func(c *jwtv3.JwtAuthentication) {
			c.Providers["origins-0"].ClearRouteCache = true
		}},
		{"bad jwks", `providers["origins-0"].local_jwks`, func(c *jwtv3.JwtAuthentication) {
			c.Providers["origins-0"].JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "{"}}}
		}},
		{"unknown provider", `rules[0].requires.requires_any.requirements[0].provider_name`, func(c *jwtv3.JwtAuthentication) {
			c.Rules[0].GetRequires().GetRequiresAny().Requirements[0].RequiresType = &jwtv3.JwtRequirement_ProviderName{ProviderName: "nope"}
		}},
		{"header name", `providers["origins-0"].claim_to_headers[0].header_name`, func(c *jwtv3.JwtAuthentication) {
			c.Providers["origins-0"].ClaimToHeaders[0].HeaderName = "bad header"
		}},
		{"regex match", `rules[0].match`, func(c *jwtv3.JwtAuthentication) {
			c.Rules[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := istiodJWT()
			tc.mutate(c)
			_, err := CompileJWT("l", c)
			var ne *NackError
			if !errors.As(err, &ne) || !strings.HasPrefix(ne.Path, tc.path) {
				t.Fatalf("err %v, want a NACK at %s", err, tc.path)
			}
		})
	}
}
