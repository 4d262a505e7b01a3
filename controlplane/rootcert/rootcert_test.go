package rootcert

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/zmesh/zmesh/internal/kubetest"
)

const (
	rootA = "-----BEGIN CERTIFICATE-----\nroot A\n-----END CERTIFICATE-----\n"
	rootB = "-----BEGIN CERTIFICATE-----\nroot B\n-----END CERTIFICATE-----\n"
)

// TestPublisherOnKubernetes runs the publisher as zmeshd's service account
// (deploy/rbac) against a real API server: the ConfigMap appears in every
// namespace, is re-created when deleted, put back when edited, and
// rewritten when the roots change.
func TestPublisherOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	cfg := env.AsServiceAccount("istio-system", "zmeshd")
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin := env.Client
	for _, ns := range []string{"apps", "shop"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	p, err := New(kube, []byte(rootA), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	before := goleak.IgnoreCurrent()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		// Run returned after its goroutines: only the client's
		// connections remain.
		if err := goleak.Find(before,
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			t.Errorf("goroutines left after Run: %v", err)
		}
	}()

	wait := func(ns, want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, Name, metav1.GetOptions{})
			if err == nil && cm.Data[Key] == want && cm.Labels["istio.io/config"] == "true" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("namespace %s: ConfigMap %s is %v (%v), want %s = %q", ns, Name, cm.Data, err, Key, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, ns := range []string{"apps", "shop", "default", "istio-system"} {
		wait(ns, rootA)
	}
	// A namespace created later gets it too.
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "late"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("late", rootA)

	// Deleted: re-created.
	if err := admin.CoreV1().ConfigMaps("apps").Delete(ctx, Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("apps", rootA)

	// Edited by someone else: put back.
	cm, err := admin.CoreV1().ConfigMaps("shop").Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[Key] = "tampered"
	if _, err := admin.CoreV1().ConfigMaps("shop").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("shop", rootA)

	// The roots change: every namespace is rewritten.
	p.SetRoots([]byte(rootB))
	for _, ns := range []string{"apps", "shop", "late", "default"} {
		wait(ns, rootB)
	}

	// System namespaces are left alone.
	if _, err := admin.CoreV1().ConfigMaps("kube-system").Get(ctx, Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("kube-system: Get %s = %v, want NotFound", Name, err)
	}
}

func TestWanted(t *testing.T) {
	now := metav1.Now()
	for _, tc := range []struct {
		name string
		ns   *corev1.Namespace
		want bool
	}{
		{"active", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}, true},
		{"deleting", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", DeletionTimestamp: &now}}, false},
		{"terminating", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceTerminating}}, false},
		{"kube-system", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}}, false},
		{"gone", nil, false},
	} {
		if got := Wanted(tc.ns); got != tc.want {
			t.Errorf("%s: Wanted = %v, want %v", tc.name, got, tc.want)
		}
	}
}
