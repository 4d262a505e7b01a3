package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"

	"github.com/zmesh/zmesh/controlplane/jwks"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/push"
	"github.com/zmesh/zmesh/controlplane/source/dir"
	"github.com/zmesh/zmesh/controlplane/status"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/controlplane/xds"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/version"
)

// zmeshd is one running control plane.
type zmeshd struct {
	f     *flags
	log   *slog.Logger
	td    spiffeid.TrustDomain
	ca    *identity.CA
	reg   *prometheus.Registry
	xds   *xds.Server
	pipe  *push.Pipeline
	ready atomic.Bool
	// jwks fetches the key sets RequestAuthentications name by jwksUri;
	// last is the newest snapshot, pushed again when a key set changes.
	jwks *jwks.Fetcher
	last atomic.Pointer[model.Snapshot]

	authn identity.Authenticator
	authz identity.Authorizer
}

func run(ctx context.Context, f *flags) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	ca, err := f.loadCA(ctx, log, identity.CAOptions{TrustDomain: td, DefaultTTL: f.certTTL})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	z := &zmeshd{f: f, log: log, td: td, ca: ca, reg: reg}
	z.xds = xds.New(log, reg, xds.TypeAddress, xds.TypeAuthorization)
	// Waypoints are served per proxy identity, from both sources.
	if err := z.xds.ServeViews(xds.EnvoyTypes...); err != nil {
		return err
	}
	mesh := model.Mesh{TrustDomain: td.Name(), RootNamespace: f.rootNamespace, ClusterID: f.clusterID, Network: f.network, DomainSuffix: f.domain}
	z.pipe = &push.Pipeline{
		XDS: z.xds, Log: log, Registry: reg, Debounce: f.debounce, MaxDelay: f.maxDelay,
		Options:   translate.Options{Mesh: mesh, RequireRedirectionAnnotation: f.configDir == ""},
		Waypoints: true,
	}
	z.jwks = &jwks.Fetcher{Log: log, OnChange: func() {
		if s := z.last.Load(); s != nil {
			z.pipe.Update(s)
		}
	}}
	z.pipe.JWKS = z.jwks.Get

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A source that fails ends zmeshd.
	errc := make(chan error, 4)

	if f.configDir != "" {
		err = z.startDirectory(ctx, &wg, errc)
	} else {
		err = z.startKubernetes(ctx, &wg, errc)
	}
	if err != nil {
		return err
	}
	wg.Go(func() { z.pipe.Run(ctx) })
	wg.Go(func() { z.jwks.Run(ctx) })
	if err := z.serve(ctx, &wg, errc); err != nil {
		return err
	}
	log.Info("zmeshd started", "source", z.source(), "xds", f.xdsAddr, "secure", f.secureAddr, "monitoring", f.monAddr, "trustDomain", td.Name())

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-errc:
		cancel()
		return err
	}
}

// update hands a new snapshot to the pipeline, after telling the key-set
// fetcher which jwksUris it names.
func (z *zmeshd) update(s *model.Snapshot) {
	z.last.Store(s)
	var uris []string
	for _, ra := range s.RequestAuthentications {
		// Only policies with targetRefs reach a waypoint.
		if ra == nil || (len(ra.Spec.TargetRefs) == 0 && ra.Spec.TargetRef == nil) {
			continue
		}
		for _, r := range ra.Spec.JwtRules {
			if r != nil && r.Jwks == "" && r.JwksUri != "" && !slices.Contains(uris, r.JwksUri) {
				uris = append(uris, r.JwksUri)
			}
		}
	}
	z.jwks.Want(uris)
	z.pipe.Update(s)
}

func (z *zmeshd) source() string {
	if z.f.configDir != "" {
		return "directory " + z.f.configDir
	}
	if z.f.kubeconfig != "" {
		return "kubeconfig " + z.f.kubeconfig
	}
	return "in-cluster"
}

// startDirectory runs the YAML directory source. Its CA callers come from
// the token file (read again when it changes), and a ztunnel may obtain the identities of the pods the
// files place on its node.
func (z *zmeshd) startDirectory(ctx context.Context, wg *sync.WaitGroup, errc chan<- error) error {
	tokens, err := loadTokenFile(z.f.tokensFile, z.log)
	if err != nil {
		return fmt.Errorf("--tokens-file: %w", err)
	}
	z.authn = tokens
	wg.Go(func() { tokens.run(ctx) })
	agents, err := parseNodeAgents(z.td, z.f.nodeAgents)
	if err != nil {
		return err
	}
	var placement atomic.Pointer[map[podIdentity]bool]
	placement.Store(&map[podIdentity]bool{})
	z.authz, err = identity.NewNodeAuthorizer(agents, func(node string, id spiffeid.ID) bool {
		return (*placement.Load())[podIdentity{node, id.String()}]
	})
	if err != nil {
		return err
	}
	if fi, err := os.Stat(z.f.configDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("--config-dir: %s is not a readable directory (%v)", z.f.configDir, err)
	}
	src := &dir.Source{Dir: z.f.configDir, StateDir: z.f.lastGood(), Log: z.log}
	wg.Go(func() {
		err := src.Run(ctx, func(u *dir.Update) {
			placement.Store(podsOnNodes(z.td, u.Snapshot))
			z.update(u.Snapshot)
		})
		if err != nil {
			errc <- fmt.Errorf("--config-dir: %w", err)
		}
	})
	rep := &status.Reporter{Log: z.log, Mesh: z.pipe.Options.Mesh}
	z.pipe.Reporter, z.pipe.RouteReporter = rep, rep
	return nil
}

type podIdentity struct{ node, id string }

// podsOnNodes lists which identities run on which node.
func podsOnNodes(td spiffeid.TrustDomain, s *model.Snapshot) *map[podIdentity]bool {
	m := map[podIdentity]bool{}
	for _, p := range s.Pods {
		if p.Spec.NodeName == "" || p.Spec.HostNetwork {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		id, err := identity.WorkloadID(td, p.Namespace, sa)
		if err != nil {
			continue
		}
		m[podIdentity{p.Spec.NodeName, id.String()}] = true
	}
	return &m
}

// serve opens the gRPC ports and the monitoring port.
func (z *zmeshd) serve(ctx context.Context, wg *sync.WaitGroup, errc chan<- error) error {
	certs, err := identity.NewCertServer(z.ca, z.authn, z.authz, identity.WithCertServerLogger(z.log))
	if err != nil {
		return err
	}
	type server struct {
		name string
		ln   net.Listener
		g    *grpc.Server
	}
	var servers []server
	if z.f.xdsAddr != "" {
		ln, err := net.Listen("tcp", z.f.xdsAddr)
		if err != nil {
			return fmt.Errorf("--xds-address: %w", err)
		}
		servers = append(servers, server{"--xds-address", ln, grpc.NewServer()})
	}
	if z.f.secureAddr != "" {
		tlsConfig, err := z.serverTLS()
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", z.f.secureAddr)
		if err != nil {
			return fmt.Errorf("--secure-address: %w", err)
		}
		g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConfig)), grpc.StreamInterceptor(xds.Authenticate(z.authn, z.td)))
		servers = append(servers, server{"--secure-address", ln, g})
	}
	for _, s := range servers {
		z.xds.Register(s.g)
		pb.RegisterIstioCertificateServiceServer(s.g, certs)
		wg.Go(func() {
			if err := s.g.Serve(s.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("%s: %w", s.name, err)
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			// Proxies reconnect to another replica (or to us after a
			// restart) and keep their last config meanwhile.
			stopped := make(chan struct{})
			go func() { s.g.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(2 * time.Second):
				s.g.Stop()
			}
		})
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(z.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /debug/syncz", z.xds.SynczHandler())
	if rep, ok := z.pipe.Reporter.(*status.Reporter); ok {
		mux.Handle("GET /debug/statusz", rep.Handler())
	}
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(version.Get())
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !z.pipe.Pushed() {
			http.Error(w, "config not loaded yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", z.f.monAddr)
	if err != nil {
		return fmt.Errorf("--monitoring-address: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("--monitoring-address: %w", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		hs.Close()
	})
	return nil
}

// serverTLS is the TLS port's config: a serving certificate from our own
// CA, for the names clients dial, renewed at half-life; client
// certificates of the mesh are verified when offered.
func (z *zmeshd) serverTLS() (*tls.Config, error) {
	id, err := identity.WorkloadID(z.td, z.f.rootNamespace, "zmeshd")
	if err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		cert    *tls.Certificate
		renewAt time.Time
	)
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cert != nil && time.Now().Before(renewAt) {
			return cert, nil
		}
		svid, err := z.ca.IssueServing(id, z.f.hosts(), 0)
		if err != nil {
			return nil, err
		}
		c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, x := range svid.Certificates {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		leaf := svid.Certificates[0]
		cert, renewAt = c, leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)/2)
		return cert, nil
	}
	if _, err := get(nil); err != nil {
		return nil, fmt.Errorf("--secure-address: serving certificate: %w", err)
	}
	roots := x509.NewCertPool()
	for _, c := range z.ca.Bundle().X509Authorities() {
		roots.AddCert(c)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: get,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
		NextProtos:     []string{"h2"},
	}, nil
}
