package kube_test

import (
	"context"
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/agent/kube"
)

// TestLookupMissAsksTheAPIServer: CNI ADD runs moments after a pod was
// created, often before the informers list it (or see its namespace's new
// label). A miss is resolved by reading the pod and its namespace from the
// API server; what cannot be read is an error, never "not ambient".
func TestLookupMissAsksTheAPIServer(t *testing.T) {
	ctx := context.Background()
	createNamespace(t, "lookup-amb", map[string]string{kube.LabelDataplaneMode: kube.ModeAmbient})
	createNamespace(t, "lookup-plain", nil)
	for _, ns := range []string{"lookup-amb", "lookup-plain"} {
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web-sa"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
			Spec:       corev1.PodSpec{NodeName: "lookup-node", ServiceAccountName: "web-sa", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Informers never started: every lookup is a cache miss.
	m, err := kube.New(kube.Config{Client: env.Client, Node: "lookup-node"})
	if err != nil {
		t.Fatal(err)
	}
	if sa, ambient, err := m.Lookup(ctx, "lookup-amb", "web"); err != nil || !ambient || sa != "web-sa" {
		t.Fatalf("Lookup of a pod the cache lacks = %q, %v, %v; want web-sa, ambient", sa, ambient, err)
	}
	if _, ambient, err := m.Lookup(ctx, "lookup-plain", "web"); err != nil || ambient {
		t.Fatalf("Lookup of a plain pod = %v, %v; want not ambient", ambient, err)
	}
	if _, ambient, err := m.Lookup(ctx, "lookup-amb", "missing"); ambient || !errors.Is(err, agent.ErrMembershipUnknown) {
		t.Fatalf("Lookup of a pod the API server does not know = %v, %v; want ErrMembershipUnknown", ambient, err)
	}

	// An API server that cannot be reached decides nothing.
	down, err := kubernetes.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err = kube.New(kube.Config{Client: down, Node: "lookup-node"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ambient, err := m.Lookup(ctx, "lookup-amb", "web"); ambient || !errors.Is(err, agent.ErrMembershipUnknown) {
		t.Fatalf("Lookup with the API server down = %v, %v; want ErrMembershipUnknown", ambient, err)
	}
}
