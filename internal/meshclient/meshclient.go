// Package meshclient is the control-plane side of a zmesh data-plane
// process: the gRPC connections to zmeshd's xDS and certificate services
// (TLS verified against the mesh's roots, or plaintext on loopback), the
// bearer token presented on every call, and the certificate manager that
// fetches and rotates workload certificates. ztunnel, the waypoint and the
// CNI agent wire themselves to the control plane through it.
//
// It must not import the control plane or either data plane.
package meshclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/zmesh/zmesh/identity"
)

// TokenFile returns a token source that reads path on every call, so a
// rotated projected token is picked up without a restart.
func TokenFile(path string) identity.TokenSource {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("token file %s: empty", path)
		}
		return tok, nil
	}
}

// Dial opens a lazy gRPC connection to addr. With roots, the server's
// certificate must chain to the roots in force at each handshake; with nil
// roots the connection is plaintext, which is for loopback only.
func Dial(addr string, roots *Bundle) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("empty address")
	}
	creds := insecure.NewCredentials()
	if roots != nil {
		creds = credentials.NewTLS(roots.clientTLS())
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)))
}

// MaxRecvMsgSize bounds one message from zmeshd. gRPC's default, 4 MiB, is
// less than the first workload-discovery response of a mesh of about
// 12 000 pods (zmeshd sends a subscriber's whole state in one response),
// and a data plane that cannot take that response never syncs. 128 MiB
// holds several hundred thousand workloads; the bound stays because the
// server is trusted but a message is decoded whole before it is checked.
const MaxRecvMsgSize = 128 << 20

// WithToken wraps conn so that every call carries token as a bearer
// credential, read afresh for each call.
func WithToken(conn grpc.ClientConnInterface, token identity.TokenSource) grpc.ClientConnInterface {
	return tokenConn{conn, token}
}

type tokenConn struct {
	grpc.ClientConnInterface
	token identity.TokenSource
}

func (c tokenConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	ctx, err := c.withToken(ctx)
	if err != nil {
		return err
	}
	return c.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
}

func (c tokenConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, err := c.withToken(ctx)
	if err != nil {
		return nil, err
	}
	return c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
}

func (c tokenConn) withToken(ctx context.Context) (context.Context, error) {
	tok, err := c.token(ctx)
	if err != nil {
		return nil, err
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// Config says where the control plane is and how to prove who we are.
type Config struct {
	// XDSAddr and CAAddr are zmeshd's gRPC addresses; CAAddr defaults to
	// XDSAddr. An empty XDSAddr opens no xDS connection (ztunnel with a
	// local config file still needs the CA).
	XDSAddr, CAAddr string
	// Roots verify zmeshd's TLS certificate and, through the certificate
	// manager, every mesh peer.
	Roots *Bundle
	// Plaintext talks to zmeshd without TLS: loopback demos only.
	Plaintext bool
	// Token is presented on every call.
	Token identity.TokenSource
	Log   *slog.Logger
}

// Client holds a process's connections to the control plane and its
// certificate manager. Close it after everything using it has stopped.
type Client struct {
	// XDS is the xDS connection with the bearer token attached; nil when
	// Config.XDSAddr was empty.
	XDS grpc.ClientConnInterface
	// Certs fetches and rotates the process's workload certificates.
	Certs *identity.Manager

	conns []*grpc.ClientConn
}

// New dials the control plane and builds the certificate manager. Nothing
// is sent until the connections are used.
func New(cfg Config) (*Client, error) {
	if cfg.Roots == nil {
		return nil, errors.New("meshclient: no trust roots")
	}
	if cfg.Token == nil {
		return nil, errors.New("meshclient: no token source")
	}
	if cfg.CAAddr == "" {
		cfg.CAAddr = cfg.XDSAddr
	}
	if cfg.CAAddr == "" {
		return nil, errors.New("meshclient: no certificate service address")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	var pool *Bundle
	if !cfg.Plaintext {
		pool = cfg.Roots
	}
	c := &Client{}
	caConn, err := Dial(cfg.CAAddr, pool)
	if err != nil {
		return nil, fmt.Errorf("certificate service %s: %w", cfg.CAAddr, err)
	}
	c.conns = append(c.conns, caConn)
	if cfg.XDSAddr != "" {
		xconn := caConn
		if cfg.XDSAddr != cfg.CAAddr {
			if xconn, err = Dial(cfg.XDSAddr, pool); err != nil {
				c.Close()
				return nil, fmt.Errorf("xds %s: %w", cfg.XDSAddr, err)
			}
			c.conns = append(c.conns, xconn)
		}
		c.XDS = WithToken(xconn, cfg.Token)
	}
	fetcher, err := identity.NewCertClient(caConn, cfg.Token, 0)
	if err != nil {
		c.Close()
		return nil, err
	}
	if c.Certs, err = identity.NewManager(fetcher, cfg.Roots, identity.ManagerOptions{Logger: cfg.Log}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Open is New for a data-plane command: the roots are loaded for td from
// the PEM file rootCert (--root-cert on the command line, reloaded as it
// changes) and the token is read from tokenFile on every call. cfg.Roots and
// cfg.Token are set here.
func Open(td spiffeid.TrustDomain, rootCert, tokenFile string, cfg Config) (*Client, error) {
	roots, err := LoadBundle(td, rootCert, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("--root-cert: %w", err)
	}
	cfg.Roots, cfg.Token = roots, TokenFile(tokenFile)
	return New(cfg)
}

// Close closes the connections.
func (c *Client) Close() {
	for _, cc := range c.conns {
		cc.Close()
	}
}
