package xds

import (
	"context"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/identity"
)

type principalKey struct{}

// Authenticate returns a stream interceptor for the TLS port: a proxy is
// admitted if it presented a client certificate (already verified by the
// TLS config against the mesh roots) with a SPIFFE ID in td, or a bearer
// token authn accepts. Anything else gets Unauthenticated. The plaintext
// port, for local use, does not use it.
func Authenticate(authn identity.Authenticator, td spiffeid.TrustDomain) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		principal, err := authenticate(ctx, authn, td)
		if err != nil {
			return err
		}
		return handler(srv, &principalStream{ServerStream: ss, ctx: context.WithValue(ctx, principalKey{}, principal)})
	}
}

func authenticate(ctx context.Context, authn identity.Authenticator, td spiffeid.TrustDomain) (string, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.VerifiedChains) > 0 {
			id, err := x509svid.IDFromCert(info.State.VerifiedChains[0][0])
			if err == nil && id.MemberOf(td) {
				return id.String(), nil
			}
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		tok, ok := strings.CutPrefix(v, "Bearer ")
		if !ok || authn == nil {
			continue
		}
		caller, err := authn.Authenticate(ctx, strings.TrimSpace(tok))
		if err != nil {
			return "", status.Errorf(codes.Unauthenticated, "xds: bearer token: %v", err)
		}
		return caller.ID.String(), nil
	}
	return "", status.Error(codes.Unauthenticated, "xds: no client certificate of the mesh and no bearer token")
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

func principalFrom(ctx context.Context) string {
	p, _ := ctx.Value(principalKey{}).(string)
	return p
}
