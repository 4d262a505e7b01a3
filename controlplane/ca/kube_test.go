package ca

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/kubetest"
)

// cluster is the topology of the integration test: two nodes, ztunnel on
// node-a, app pods on both.
type cluster struct {
	t      *testing.T
	client kubernetes.Interface
}

func (c *cluster) create(obj any) {
	c.t.Helper()
	ctx := c.t.Context()
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = c.client.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = c.client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	default:
		c.t.Fatalf("create %T", obj)
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// pod creates a pod bound to node running as sa, with the given phase.
func (c *cluster) pod(ns, name, sa, node string, hostNetwork bool, phase corev1.PodPhase) *corev1.Pod {
	c.t.Helper()
	ctx := c.t.Context()
	p, err := c.client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: sa,
			HostNetwork:        hostNetwork,
			Containers:         []corev1.Container{{Name: "main", Image: "example.invalid/app"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	p.Status.Phase = phase
	if p, err = c.client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// token asks the TokenRequest API for a token of sa for audience, bound to
// pod if not nil.
func (c *cluster) token(ns, sa, audience string, pod *corev1.Pod) string {
	c.t.Helper()
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	resp, err := c.client.CoreV1().ServiceAccounts(ns).CreateToken(c.t.Context(), sa, req, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.Status.Token
}

// TestCertServerOnKubernetes runs the real certificate service with
// TokenReview authentication and the pod index against a real API server.
func TestCertServerOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	c := &cluster{t: t, client: env.Client}
	ctx := t.Context()
	for _, ns := range []string{"istio-system", "apps"} {
		c.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	for _, n := range []string{"node-a", "node-b"} {
		c.create(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	for _, sa := range [][2]string{{"istio-system", "ztunnel"}, {"apps", "reviews"}, {"apps", "ratings"}, {"apps", "batch"}, {"apps", "intruder"}} {
		c.create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: sa[0], Name: sa[1]}})
	}
	ztunnelA := c.pod("istio-system", "ztunnel-a", "ztunnel", "node-a", true, corev1.PodRunning)
	c.pod("apps", "reviews-1", "reviews", "node-a", false, corev1.PodRunning)
	c.pod("apps", "ratings-1", "ratings", "node-b", false, corev1.PodRunning)
	c.pod("apps", "batch-1", "batch", "node-a", false, corev1.PodSucceeded)
	intruderPod := c.pod("apps", "intruder-1", "intruder", "node-a", false, corev1.PodRunning)

	// The wiring cmd/zmeshd does.
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authn, err := NewTokenReviewAuthenticator(env.Client.AuthenticationV1().TokenReviews(), TokenReviewOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(env.Client, 0)
	pods, err := NewPodIndex(factory.Core().V1().Pods().Informer(), td)
	if err != nil {
		t.Fatal(err)
	}
	agents, err := ParseNodeAgents(td, DefaultNodeAgents)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := NewNodeAuthorizer(agents, pods)
	if err != nil {
		t.Fatal(err)
	}
	// Before the informer runs, impersonation is refused as "not synced".
	if err := authz.AuthorizeImpersonation(ctx, identity.Caller{ID: agents[0], Node: "node-a"}, identity.MustWorkloadID("cluster.local", "apps", "reviews")); !errors.Is(err, ErrPodsNotSynced) {
		t.Fatalf("before sync: %v, want ErrPodsNotSynced", err)
	}
	informerCtx, stopInformers := context.WithCancel(ctx)
	factory.Start(informerCtx.Done())
	t.Cleanup(func() { stopInformers(); factory.Shutdown() })
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("%v did not sync", typ)
		}
	}

	authority, err := identity.LoadOrCreateCA(t.TempDir(), identity.CAOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	server, err := identity.NewCertServer(authority, authn, authz)
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, server)

	fetch := func(token string, id spiffeid.ID) error {
		t.Helper()
		cl, err := identity.NewCertClient(conn, func(context.Context) (string, error) { return token, nil }, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := cl.Fetch(ctx, id)
		if err != nil {
			return err
		}
		if len(svid.Certificates[0].URIs) != 1 || svid.Certificates[0].URIs[0].String() != id.String() {
			t.Fatalf("certificate for %s has URI SANs %v", id, svid.Certificates[0].URIs)
		}
		return nil
	}
	wantCode := func(err error, code codes.Code, contains string) {
		t.Helper()
		if status.Code(err) != code {
			t.Fatalf("err = %v, want code %v", err, code)
		}
		if !strings.Contains(err.Error(), contains) {
			t.Fatalf("err = %v, want it to say %q", err, contains)
		}
		t.Logf("refused as expected: %v", err)
	}

	reviews := identity.MustWorkloadID("cluster.local", "apps", "reviews")
	ratings := identity.MustWorkloadID("cluster.local", "apps", "ratings")
	ztunnelID := identity.MustWorkloadID("cluster.local", "istio-system", "ztunnel")
	bound := c.token("istio-system", "ztunnel", Audience, ztunnelA)

	t.Run("pod on the caller's node is issued", func(t *testing.T) {
		if err := fetch(bound, reviews); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pod on another node is refused", func(t *testing.T) {
		wantCode(fetch(bound, ratings), codes.PermissionDenied, "node node-a")
	})
	t.Run("finished pod is refused", func(t *testing.T) {
		wantCode(fetch(bound, identity.MustWorkloadID("cluster.local", "apps", "batch")), codes.PermissionDenied, "no pod with this identity")
	})
	t.Run("wrong audience is refused", func(t *testing.T) {
		wantCode(fetch(c.token("istio-system", "ztunnel", "other-audience", ztunnelA), reviews), codes.Unauthenticated, "audience")
	})
	t.Run("token bound to no pod has no node", func(t *testing.T) {
		plain := c.token("istio-system", "ztunnel", Audience, nil)
		wantCode(fetch(plain, reviews), codes.PermissionDenied, "bound to no node")
		// Its own identity needs no node.
		if err := fetch(plain, ztunnelID); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("other service accounts may not impersonate", func(t *testing.T) {
		tok := c.token("apps", "intruder", Audience, intruderPod)
		wantCode(fetch(tok, reviews), codes.PermissionDenied, "is not a node agent")
		if err := fetch(tok, identity.MustWorkloadID("cluster.local", "apps", "intruder")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("new pods are seen, deleted pods forgotten", func(t *testing.T) {
		c.create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "details"}})
		details := identity.MustWorkloadID("cluster.local", "apps", "details")
		c.pod("apps", "details-1", "details", "node-a", false, corev1.PodPending)
		eventually(t, "details issued", func() bool { return fetch(bound, details) == nil })
		if err := env.Client.CoreV1().Pods("apps").Delete(ctx, "details-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "details refused", func() bool { return status.Code(fetch(bound, details)) == codes.PermissionDenied })
	})
	t.Run("token of a deleted pod is refused", func(t *testing.T) {
		// A fresh authenticator, so that no cached review hides the revocation.
		fresh, err := NewTokenReviewAuthenticator(env.Client.AuthenticationV1().TokenReviews(), TokenReviewOptions{TrustDomain: td, CacheTTL: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fresh.Authenticate(ctx, bound); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.CoreV1().Pods("istio-system").Delete(ctx, "ztunnel-a", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "token of deleted pod refused", func() bool {
			_, err := fresh.Authenticate(ctx, bound)
			return errors.Is(err, ErrTokenRefused)
		})
	})
}

// serve runs the certificate service on a loopback listener and returns a
// client connection to it.
func serve(t *testing.T, server pb.IstioCertificateServiceServer) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(gs, server)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
