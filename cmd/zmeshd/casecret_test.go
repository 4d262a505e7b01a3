package main

import (
	"bytes"
	"log/slog"
	"os"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/kubetest"
)

// TestCASecretOneRootForAllReplicas starts the CA of several zmeshd
// replicas at once against a real API server, each with an empty --ca-dir
// (the optional cacerts Secret absent): they race to create
// istio-ca-secret, and every one ends with the winner's root; a replica
// started later (a restart) reads the same root; no key touches the pod's
// disk. A plugged-in CA in --ca-dir still wins over the Secret.
func TestCASecretOneRootForAllReplicas(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	replica := func(caDir string) (*identity.CA, error) {
		f, err := parseFlags([]string{"--kubeconfig", env.Kubeconfig, "--ca-dir", caDir,
			"--ca-secret", "istio-ca-secret", "--ca-secret-namespace", "istio-system"})
		if err != nil {
			return nil, err
		}
		return f.loadCA(ctx, log, identity.CAOptions{})
	}

	const n = 4
	roots := make([][]byte, n)
	dirs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		dirs[i] = t.TempDir()
		wg.Go(func() {
			ca, err := replica(dirs[i])
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			roots[i] = ca.RootsPEM()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i := 1; i < n; i++ {
		if !bytes.Equal(roots[i], roots[0]) {
			t.Errorf("replica %d signs under another root than replica 0:\n%s\nvs\n%s", i, roots[i], roots[0])
		}
	}
	s, err := env.Client.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(s.Data[identity.FileCACert]), bytes.TrimSpace(roots[0])) {
		t.Errorf("istio-ca-secret's %s is not the root the replicas use", identity.FileCACert)
	}
	for i, d := range dirs {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("replica %d wrote %d files into its --ca-dir; the root belongs in the Secret only", i, len(ents))
		}
	}

	restarted, err := replica(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(restarted.RootsPEM(), roots[0]) {
		t.Error("a restarted replica generated a new root instead of reading the Secret's")
	}

	plugged := t.TempDir()
	own, err := identity.LoadOrCreateCA(plugged, identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := replica(plugged)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.RootsPEM(), own.RootsPEM()) || bytes.Equal(got.RootsPEM(), roots[0]) {
		t.Error("keys in --ca-dir did not take precedence over the Secret")
	}
}
