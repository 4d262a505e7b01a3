package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the request metadata field in which Istio's
// ztunnel names the identity it asks a certificate for, on behalf of a pod
// on its node.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// Caller is an authenticated client of the certificate service.
type Caller struct {
	// ID is the caller's own identity, e.g. ztunnel's service account.
	ID spiffeid.ID
	// Node is the node the caller runs on; empty if unknown.
	Node string
}

// Authenticator turns a bearer token into a Caller.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// Authorizer decides whether a caller may obtain a certificate for an
// identity other than its own.
type Authorizer interface {
	AuthorizeImpersonation(ctx context.Context, caller Caller, requested spiffeid.ID) error
}

// CertServer is the certificate service, wire-compatible with istiod's
// istio.v1.auth.IstioCertificateService, so Istio's ztunnel can use it.
type CertServer struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca    *CA
	authn Authenticator
	authz Authorizer
	log   *slog.Logger
}

// CertServerOption configures a CertServer.
type CertServerOption func(*CertServer)

// WithCertServerLogger sets the logger of decisions; slog.Default() if unset.
func WithCertServerLogger(l *slog.Logger) CertServerOption {
	return func(s *CertServer) {
		if l != nil {
			s.log = l
		}
	}
}

// NewCertServer returns a certificate service signing with ca. authz may be
// nil: then no caller may obtain any identity but its own.
func NewCertServer(ca *CA, authn Authenticator, authz Authorizer, opts ...CertServerOption) (*CertServer, error) {
	if ca == nil {
		return nil, errors.New("cert server: nil ca")
	}
	if authn == nil {
		return nil, errors.New("cert server: nil authenticator")
	}
	s := &CertServer{ca: ca, authn: authn, authz: authz, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// CreateCertificate implements pb.IstioCertificateServiceServer. Errors carry
// gRPC codes: Unauthenticated (token missing or refused), InvalidArgument
// (malformed request), PermissionDenied (identity not granted), Internal.
func (s *CertServer) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	start := time.Now()
	token, err := bearerToken(ctx)
	if err != nil {
		s.log.InfoContext(ctx, "certificate denied", "reason", err.Error())
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	caller, err := s.authn.Authenticate(ctx, token)
	authenticated := time.Since(start)
	if err != nil {
		s.log.InfoContext(ctx, "certificate denied", "reason", "authenticate: "+err.Error())
		return nil, status.Errorf(codes.Unauthenticated, "authenticate: %v", err)
	}
	log := s.log.With("caller", caller.ID.String(), "node", caller.Node)

	requested, err := requestedIdentity(req.GetMetadata())
	if err != nil {
		log.InfoContext(ctx, "certificate denied", "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if requested.IsZero() {
		requested = caller.ID
	}
	log = log.With("identity", requested.String())
	ttl, err := validity(req.GetValidityDuration())
	if err != nil {
		log.InfoContext(ctx, "certificate denied", "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.authorize(ctx, caller, requested); err != nil {
		log.InfoContext(ctx, "certificate denied", "reason", err.Error())
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}

	leaf, err := s.ca.Sign([]byte(req.GetCsr()), requested, ttl)
	if errors.Is(err, ErrInvalidCSR) {
		log.InfoContext(ctx, "certificate denied", "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		log.ErrorContext(ctx, "certificate signing failed", "reason", err.Error())
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	log.InfoContext(ctx, "certificate issued", "not_after", leaf.NotAfter, "serial", leaf.SerialNumber.Text(16),
		"authenticate", authenticated.Round(time.Millisecond).String(), "took", time.Since(start).Round(time.Millisecond).String())
	return &pb.IstioCertificateResponse{CertChain: s.ca.WireChain(leaf)}, nil
}

// authorize grants a caller its own identity, and another one in the CA's
// trust domain only if the Authorizer agrees.
func (s *CertServer) authorize(ctx context.Context, caller Caller, requested spiffeid.ID) error {
	if requested.TrustDomain() != s.ca.TrustDomain() {
		return fmt.Errorf("identity %s: %w %s", requested, ErrForeignTrustDomain, s.ca.TrustDomain())
	}
	if requested == caller.ID {
		return nil
	}
	if s.authz == nil {
		return fmt.Errorf("caller %s may not impersonate %s: impersonation is disabled", caller.ID, requested)
	}
	if err := s.authz.AuthorizeImpersonation(ctx, caller, requested); err != nil {
		return fmt.Errorf("caller %s may not impersonate %s: %w", caller.ID, requested, err)
	}
	return nil
}

// bearerToken returns the token of the request's "authorization: Bearer"
// header, the way Istio's clients authenticate.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return parseBearer(md.Get("authorization"))
}

func parseBearer(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", errors.New("missing authorization header")
	case 1:
	default:
		return "", fmt.Errorf("%d authorization headers, want 1", len(values))
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", errors.New("authorization header: want \"Bearer <token>\"")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", errors.New("authorization header: empty bearer token")
	}
	return token, nil
}

// requestedIdentity reads ImpersonatedIdentity from request metadata. It
// returns the zero ID when the field is absent or empty, which istiod also
// reads as "the caller's own identity".
func requestedIdentity(md *structpb.Struct) (spiffeid.ID, error) {
	v, ok := md.GetFields()[ImpersonatedIdentityKey]
	if !ok {
		return spiffeid.ID{}, nil
	}
	sv, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("metadata %s: not a string", ImpersonatedIdentityKey)
	}
	if sv.StringValue == "" {
		return spiffeid.ID{}, nil
	}
	id, err := spiffeid.FromString(sv.StringValue)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("metadata %s: %w", ImpersonatedIdentityKey, err)
	}
	return id, nil
}

// validity converts the request's validity_duration (seconds) to a TTL;
// zero asks for the CA's default.
func validity(seconds int64) (time.Duration, error) {
	if seconds < 0 {
		return 0, fmt.Errorf("validity_duration: negative (%d s)", seconds)
	}
	// Anything beyond ~292 years overflows Duration; the CA caps far below.
	if seconds > int64(time.Duration(1<<63-1)/time.Second) {
		return time.Duration(1<<63 - 1), nil
	}
	return time.Duration(seconds) * time.Second, nil
}
