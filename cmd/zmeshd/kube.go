package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/controlplane/ca"
	"github.com/zmesh/zmesh/controlplane/deployer"
	"github.com/zmesh/zmesh/controlplane/rootcert"
	"github.com/zmesh/zmesh/controlplane/source/kube"
	"github.com/zmesh/zmesh/controlplane/status"
)

// startKubernetes runs the API server source, the TokenReview-backed CA
// and, on the elected replica, the writers (status, waypoints).
func (z *zmeshd) startKubernetes(ctx context.Context, wg *sync.WaitGroup, errc chan<- error) error {
	cfg, err := restConfig(z.f.kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "zmeshd"
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ic, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	gc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(kc, 0)
	pods, err := ca.NewPodIndex(factory.Core().V1().Pods().Informer(), z.td)
	if err != nil {
		return err
	}
	agents, err := parseNodeAgents(z.td, z.f.nodeAgents)
	if err != nil {
		return err
	}
	if z.authz, err = ca.NewNodeAuthorizer(agents, pods); err != nil {
		return err
	}
	if z.authn, err = ca.NewTokenReviewAuthenticator(kc.AuthenticationV1().TokenReviews(), ca.TokenReviewOptions{TrustDomain: z.td}); err != nil {
		return err
	}

	var leading atomic.Bool
	if !z.f.leaderElect {
		leading.Store(true)
		wg.Go(func() { z.lead(ctx, kc, gc) })
	} else {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: z.f.leaseNamespace, Name: z.f.leaseName},
				Client:     kc.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: z.f.identity},
			},
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            "zmeshd",
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					leading.Store(true)
					z.log.Info("elected leader: writing status and waypoints", "identity", z.f.identity)
					z.lead(ctx, kc, gc)
				},
				OnStoppedLeading: func() {
					leading.Store(false)
					z.log.Info("no longer leader", "identity", z.f.identity)
				},
				OnNewLeader: func(id string) { z.log.Info("leader", "identity", id) },
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		// Elections run until ctx ends: a replica that loses the lease
		// stands again.
		wg.Go(func() {
			for ctx.Err() == nil {
				le.Run(ctx)
			}
		})
	}
	rep := &status.Reporter{Log: z.log, Istio: ic, Gateway: gc, Mesh: z.pipe.Options.Mesh, Leader: leading.Load}
	z.pipe.Reporter, z.pipe.RouteReporter = rep, rep

	src := &kube.Source{Kube: kc, Istio: ic, Gateway: gc, Log: z.log, Informers: factory}
	wg.Go(func() {
		if err := src.Run(ctx, z.update); err != nil {
			errc <- err
		}
	})
	return nil
}

// lead runs what only the leader does besides writing status (the
// waypoint deployer, the root certificate ConfigMaps), until ctx ends.
func (z *zmeshd) lead(ctx context.Context, kc kubernetes.Interface, gc gatewayclient.Interface) {
	var wg sync.WaitGroup
	wg.Go(func() {
		roots, err := rootcert.New(kc, z.ca.RootsPEM(), z.log)
		if err == nil {
			err = roots.Run(ctx)
		}
		if err != nil && ctx.Err() == nil {
			z.log.Error("root certificate publisher stopped", "error", err)
		}
	})
	ctrl, err := deployer.New(kc, gc, deployer.Options{Image: z.f.waypointImage, XDSAddress: z.f.waypointXDS, Sizing: z.f.waypointSizing, Log: z.log})
	if err == nil {
		err = ctrl.Run(ctx)
	}
	if err != nil {
		z.log.Error("waypoint controller stopped", "error", err)
	}
	<-ctx.Done()
	wg.Wait()
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --config-dir or --kubeconfig, and not in a cluster: %w", err)
	}
	return cfg, nil
}

func parseNodeAgents(td spiffeid.TrustDomain, list string) ([]spiffeid.ID, error) {
	var entries []string
	for e := range strings.SplitSeq(list, ",") {
		if e = strings.TrimSpace(e); e != "" {
			entries = append(entries, e)
		}
	}
	ids, err := ca.ParseNodeAgents(td, entries)
	if err != nil {
		return nil, fmt.Errorf("--node-agents: %w", err)
	}
	return ids, nil
}
