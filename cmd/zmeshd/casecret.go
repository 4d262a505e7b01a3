package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/zmesh/zmesh/identity"
)

// loadCA returns the CA zmeshd signs with. Every replica must sign with the
// same key, or a workload's certificate from one replica would not verify
// against the root another replica handed its peer. Keys a person plugged
// into --ca-dir (Istio's cacerts layout, or a generated root kept there)
// win. Otherwise, with a cluster and --ca-secret, the root lives in that
// Secret: the first replica to start generates it and creates the Secret,
// the others read it (istiod keeps its self-signed root the same way, in
// istio-ca-secret). Without either, the root is generated into --ca-dir.
func (f *flags) loadCA(ctx context.Context, log *slog.Logger, opts identity.CAOptions) (*identity.CA, error) {
	held, err := dirHoldsCA(f.caDir)
	if err != nil {
		return nil, fmt.Errorf("--ca-dir: %w", err)
	}
	if held || f.caSecret == "" || f.configDir != "" {
		ca, err := identity.LoadOrCreateCA(f.caDir, opts)
		if err != nil {
			return nil, fmt.Errorf("--ca-dir: %w", err)
		}
		return ca, nil
	}
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ca, created, err := caFromSecret(ctx, kc, f.caSecretNamespace, f.caSecret, opts)
	if err != nil {
		return nil, fmt.Errorf("--ca-secret %s/%s: %w", f.caSecretNamespace, f.caSecret, err)
	}
	log.Info("CA root from Secret", "secret", f.caSecretNamespace+"/"+f.caSecret, "created", created)
	return ca, nil
}

// dirHoldsCA reports whether dir has key material of either layout
// (a Secret mounted with optional: true and absent leaves it empty).
func dirHoldsCA(dir string) (bool, error) {
	for _, name := range []string{identity.FileCACert, identity.FileCAKey, identity.FileRootKey, identity.FileRootCert} {
		_, err := os.Stat(filepath.Join(dir, name))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return false, nil
}

// caFromSecret reads the CA from Secret ns/name, creating it with a new
// self-signed root if it does not exist. Replicas starting together race
// to create it: the API server lets one create win, and the losers read
// the winner's root back, so all end with one root.
func caFromSecret(ctx context.Context, kc kubernetes.Interface, ns, name string, opts identity.CAOptions) (ca *identity.CA, created bool, err error) {
	secrets := kc.CoreV1().Secrets(ns)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		var fresh *corev1.Secret
		if fresh, err = newRootSecret(ns, name, opts); err != nil {
			return nil, false, err
		}
		s, err = secrets.Create(ctx, fresh, metav1.CreateOptions{})
		created = err == nil
		if apierrors.IsAlreadyExists(err) {
			s, err = secrets.Get(ctx, name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, false, err
	}
	cert, key := s.Data[identity.FileCACert], s.Data[identity.FileCAKey]
	if len(cert) == 0 || len(key) == 0 {
		return nil, false, fmt.Errorf("the Secret lacks %s or %s", identity.FileCACert, identity.FileCAKey)
	}
	// istiod leaves root-cert.pem empty when ca-cert.pem is the root.
	root := s.Data[identity.FileRootCert]
	if len(root) == 0 {
		root = cert
	}
	ca, err = identity.NewCAFromPEM(cert, key, s.Data[identity.FileCertChain], root, opts)
	return ca, created, err
}

// newRootSecret generates a self-signed root (in a private scratch
// directory, removed at once) and returns the Secret that holds it in
// istiod's istio-ca-secret layout.
func newRootSecret(ns, name string, opts identity.CAOptions) (*corev1.Secret, error) {
	dir, err := os.MkdirTemp("", "zmeshd-ca-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if _, err := identity.LoadOrCreateCA(dir, opts); err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(filepath.Join(dir, identity.FileRootCert))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(filepath.Join(dir, identity.FileRootKey))
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "zmeshd"}},
		Type: "istio.io/ca-root",
		Data: map[string][]byte{
			identity.FileCACert: cert, identity.FileCAKey: key,
			identity.FileCertChain: nil, identity.FileRootCert: nil,
		},
	}, nil
}
