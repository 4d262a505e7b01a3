package ca_test

import (
	"context"
	"log"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/zmesh/zmesh/controlplane/ca"
	"github.com/zmesh/zmesh/identity"
)

// The wiring of zmeshd's certificate service in a cluster. Every replica
// serves certificates (no leader election needed).
func Example() {
	var (
		ctx    context.Context      // zmeshd's lifetime
		client kubernetes.Interface // zmeshd's, with deploy/rbac/zmeshd.yaml
		caDir  string               // --ca-dir
	)
	td := spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

	authn, err := ca.NewTokenReviewAuthenticator(client.AuthenticationV1().TokenReviews(), ca.TokenReviewOptions{TrustDomain: td})
	if err != nil {
		log.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(client, 0) // may be shared with the config source
	pods, err := ca.NewPodIndex(factory.Core().V1().Pods().Informer(), td)
	if err != nil {
		log.Fatal(err)
	}
	agents, err := ca.ParseNodeAgents(td, ca.DefaultNodeAgents) // or a --node-agents flag
	if err != nil {
		log.Fatal(err)
	}
	authz, err := ca.NewNodeAuthorizer(agents, pods)
	if err != nil {
		log.Fatal(err)
	}
	authority, err := identity.LoadOrCreateCA(caDir, identity.CAOptions{TrustDomain: td})
	if err != nil {
		log.Fatal(err)
	}
	server, err := identity.NewCertServer(authority, authn, authz)
	if err != nil {
		log.Fatal(err)
	}
	factory.Start(ctx.Done()) // until synced, impersonation is refused with ErrPodsNotSynced
	_ = server                // register on zmeshd's gRPC server (TLS)
}
