package identity

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

const (
	ztunnelToken = "ztunnel-node1-token"
	podToken     = "pod-a-token"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// startCertServer serves a CertServer on 127.0.0.1 and returns a connection
// to it. Node "node1" runs pods a and b; ztunnel is its node agent.
func startCertServer(t *testing.T, ca *CA, withAuthz bool) *grpc.ClientConn {
	t.Helper()
	authn, err := NewStaticTokenAuthenticator(map[string]Caller{
		ztunnelToken: {ID: ztunnelID, Node: "node1"},
		podToken:     {ID: podAID, Node: "node1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var authz Authorizer
	if withAuthz {
		na, err := NewNodeAuthorizer([]spiffeid.ID{ztunnelID}, func(node string, id spiffeid.ID) bool {
			return node == "node1" && (id == podAID || id == podBID)
		})
		if err != nil {
			t.Fatal(err)
		}
		authz = na
	}
	cs, err := NewCertServer(ca, authn, authz, WithCertServerLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(srv, cs)
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return conn
}

func TestCreateCertificate(t *testing.T) {
	ca, _ := newPluggedCA(t, CAOptions{Now: time.Now})
	client := pb.NewIstioCertificateServiceClient(startCertServer(t, ca, true))
	noAuthz := pb.NewIstioCertificateServiceClient(startCertServer(t, ca, false))

	impersonate := func(v *structpb.Value) *structpb.Struct {
		return &structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentityKey: v}}
	}
	as := func(id spiffeid.ID) *structpb.Struct { return impersonate(structpb.NewStringValue(id.String())) }
	csr := string(newCSR(t))

	tests := []struct {
		name     string
		client   pb.IstioCertificateServiceClient
		auth     []string // authorization header values
		md       *structpb.Struct
		csr      string
		validity int64
		code     codes.Code
		wantID   spiffeid.ID
		wantTTL  time.Duration
	}{
		{name: "own identity", auth: []string{"Bearer " + ztunnelToken}, code: codes.OK, wantID: ztunnelID},
		{name: "own identity named", auth: []string{"Bearer " + podToken}, md: as(podAID), code: codes.OK, wantID: podAID},
		{name: "lowercase scheme", auth: []string{"bearer " + ztunnelToken}, code: codes.OK, wantID: ztunnelID},
		{name: "empty impersonation is own", auth: []string{"Bearer " + ztunnelToken}, md: impersonate(structpb.NewStringValue("")), code: codes.OK, wantID: ztunnelID},
		{name: "pod on node", auth: []string{"Bearer " + ztunnelToken}, md: as(podBID), code: codes.OK, wantID: podBID},
		{name: "validity", auth: []string{"Bearer " + ztunnelToken}, md: as(podAID), validity: 3600, code: codes.OK, wantID: podAID, wantTTL: time.Hour},
		{name: "pod not on node", auth: []string{"Bearer " + ztunnelToken}, md: as(podCID), code: codes.PermissionDenied},
		{name: "pod is no node agent", auth: []string{"Bearer " + podToken}, md: as(podBID), code: codes.PermissionDenied},
		{name: "no authorizer", client: noAuthz, auth: []string{"Bearer " + ztunnelToken}, md: as(podAID), code: codes.PermissionDenied},
		{name: "no authorizer own identity", client: noAuthz, auth: []string{"Bearer " + ztunnelToken}, code: codes.OK, wantID: ztunnelID},
		{name: "other trust domain", auth: []string{"Bearer " + ztunnelToken}, md: as(foreignID), code: codes.PermissionDenied},
		{name: "no token", code: codes.Unauthenticated},
		{name: "bad token", auth: []string{"Bearer nope"}, code: codes.Unauthenticated},
		{name: "basic scheme", auth: []string{"Basic " + ztunnelToken}, code: codes.Unauthenticated},
		{name: "empty bearer", auth: []string{"Bearer "}, code: codes.Unauthenticated},
		{name: "two headers", auth: []string{"Bearer " + ztunnelToken, "Bearer " + podToken}, code: codes.Unauthenticated},
		{name: "bad impersonated identity", auth: []string{"Bearer " + ztunnelToken}, md: impersonate(structpb.NewStringValue("default/a")), code: codes.InvalidArgument},
		{name: "impersonated identity not a string", auth: []string{"Bearer " + ztunnelToken}, md: impersonate(structpb.NewNumberValue(1)), code: codes.InvalidArgument},
		{name: "malformed csr", auth: []string{"Bearer " + ztunnelToken}, csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", code: codes.InvalidArgument},
		{name: "negative validity", auth: []string{"Bearer " + ztunnelToken}, validity: -1, code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.client
			if c == nil {
				c = client
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, a := range tt.auth {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", a)
			}
			req := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: tt.validity, Metadata: tt.md}
			if tt.csr != "" {
				req.Csr = tt.csr
			}
			resp, err := c.CreateCertificate(ctx, req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code = %s, want %s (%v)", got, tt.code, err)
			}
			if tt.code != codes.OK {
				return
			}
			chain := resp.GetCertChain()
			if len(chain) != 3 || chain[2] != string(ca.RootsPEM()) {
				t.Fatalf("cert_chain has %d elements, want leaf, intermediate, roots", len(chain))
			}
			certs, err := parseWireChain(chain)
			if err != nil {
				t.Fatal(err)
			}
			id, _, err := x509svid.Verify(certs, ca.Bundle())
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.wantID {
				t.Errorf("certificate for %s, want %s", id, tt.wantID)
			}
			ttl := cmpOr(tt.wantTTL, DefaultCertTTL)
			if got := certs[0].NotAfter.Sub(certs[0].NotBefore) - time.Minute; got < ttl-5*time.Second || got > ttl+5*time.Second {
				t.Errorf("lifetime = %s, want %s", got, ttl)
			}
		})
	}
}

func cmpOr(a, b time.Duration) time.Duration {
	if a != 0 {
		return a
	}
	return b
}

func TestNewCertServerValidates(t *testing.T) {
	ca, _ := newPluggedCA(t, CAOptions{})
	authn, _ := NewStaticTokenAuthenticator(nil)
	if _, err := NewCertServer(nil, authn, nil); err == nil {
		t.Error("nil ca accepted")
	}
	if _, err := NewCertServer(ca, nil, nil); err == nil {
		t.Error("nil authenticator accepted")
	}
}

func TestNodeAuthorizer(t *testing.T) {
	onNode := func(node string, id spiffeid.ID) bool { return node == "n1" && id == podAID }
	a, err := NewNodeAuthorizer([]spiffeid.ID{ztunnelID}, onNode)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		caller Caller
		id     spiffeid.ID
		ok     bool
	}{
		{"pod on node", Caller{ztunnelID, "n1"}, podAID, true},
		{"pod elsewhere", Caller{ztunnelID, "n1"}, podBID, false},
		{"other node", Caller{ztunnelID, "n2"}, podAID, false},
		{"no node", Caller{ztunnelID, ""}, podAID, false},
		{"not a node agent", Caller{podBID, "n1"}, podAID, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.AuthorizeImpersonation(context.Background(), tt.caller, tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if _, err := NewNodeAuthorizer(nil, nil); err == nil {
		t.Error("nil lookup accepted")
	}
}
