// Package kubetest starts a real etcd + kube-apiserver + controllers for
// tests, with ../shared/tools/kube-testenv.sh (which builds them from source
// once per machine and caches them). Each Env has its own state directory,
// so packages running in parallel do not share one.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Env is a running control plane.
type Env struct {
	// Kubeconfig is the admin kubeconfig (client certificate in
	// system:masters).
	Kubeconfig string
	// APIServer is its https URL; CAFile verifies it.
	APIServer, CAFile string
	// Token is a static admin bearer token.
	Token string
	// Kubectl is the path of a kubectl of the same version.
	Kubectl string
	// Config and Client are the admin's.
	Config *rest.Config
	Client kubernetes.Interface

	script string
	env    []string
}

// Script is the path of kube-testenv.sh, found from this source file.
func Script() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	// internal/kubetest/ -> repo root -> ../shared/tools
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "tools", "kube-testenv.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("kube-testenv.sh not beside the repository (../shared/tools): %w", err)
	}
	return filepath.Clean(p), nil
}

// Build compiles the binaries if the cache lacks them (minutes when cold;
// concurrent callers wait for one build).
func Build(ctx context.Context) error {
	script, err := Script()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "bash", script, "build")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kube-testenv.sh build: %w\n%s", err, tail(out.String(), 40))
	}
	return nil
}

// Start builds if needed and starts a control plane in a fresh state
// directory. Stop it with Stop.
func Start(ctx context.Context) (*Env, error) {
	if err := Build(ctx); err != nil {
		return nil, err
	}
	script, _ := Script()
	state, err := os.MkdirTemp("", "zmesh-kube-*")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "bash", script, "start")
	cmd.Env = append(os.Environ(), "KUBE_TESTENV_STATE="+state)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	e := &Env{script: script, env: []string{"KUBE_TESTENV_STATE=" + state}}
	if err := cmd.Run(); err != nil {
		e.Stop()
		return nil, fmt.Errorf("kube-testenv.sh start: %w\n%s", err, tail(stderr.String(), 40))
	}
	vars := parseExports(stdout.String())
	e.Kubeconfig, e.APIServer, e.CAFile = vars["KUBECONFIG"], vars["KUBE_TESTENV_APISERVER"], vars["KUBE_TESTENV_CA_FILE"]
	e.Token, e.Kubectl = vars["KUBE_TESTENV_TOKEN"], vars["KUBECTL"]
	if e.Kubeconfig == "" {
		e.Stop()
		return nil, fmt.Errorf("kube-testenv.sh start printed no KUBECONFIG:\n%s", stdout.String())
	}
	if e.Config, err = clientcmd.BuildConfigFromFlags("", e.Kubeconfig); err != nil {
		e.Stop()
		return nil, err
	}
	if e.Client, err = kubernetes.NewForConfig(e.Config); err != nil {
		e.Stop()
		return nil, err
	}
	return e, nil
}

// Stop kills the processes and removes the state directory.
func (e *Env) Stop() error {
	cmd := exec.Command("bash", e.script, "stop")
	cmd.Env = append(os.Environ(), e.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kube-testenv.sh stop: %w\n%s", err, out)
	}
	return nil
}

// ForTest starts a control plane for one test and stops it at cleanup.
func ForTest(t testing.TB) *Env {
	t.Helper()
	e, err := Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// KubectlRun runs kubectl against e with args, feeding it stdin if not
// empty, and returns its combined output.
func (e *Env) KubectlRun(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.Kubectl, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustKubectl is KubectlRun for a test: it fails t if kubectl fails.
func (e *Env) MustKubectl(t testing.TB, stdin string, args ...string) {
	t.Helper()
	if out, err := e.KubectlRun(t.Context(), stdin, args...); err != nil {
		t.Fatal(out, err)
	}
}

// AsServiceAccount is a copy of e's client config that acts as the
// service account ns/name (with the groups the API server gives service
// accounts), so a test exercises what that account's RBAC allows.
func (e *Env) AsServiceAccount(ns, name string) *rest.Config {
	cfg := rest.CopyConfig(e.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	return cfg
}

// parseExports reads `export K=V` lines (values as printf %q writes them
// for plain paths and tokens).
func parseExports(s string) map[string]string {
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export ")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		vars[k] = strings.Trim(v, `'"`)
	}
	return vars
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitEstablished waits until the named CRDs (resource names, or none for
// every CRD) are Established. A CRD created a moment ago may have no
// status yet, on which `kubectl wait` fails at once rather than waiting,
// so the wait is retried until timeout.
func (e *Env) WaitEstablished(ctx context.Context, timeout time.Duration, crds ...string) error {
	args := []string{"wait", "--for=condition=Established", "--timeout=" + timeout.String()}
	if len(crds) == 0 {
		args = append(args, "crd", "--all")
	}
	for _, c := range crds {
		args = append(args, "crd/"+c)
	}
	deadline := time.Now().Add(timeout)
	for {
		out, err := e.KubectlRun(ctx, "", args...)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("CRDs not Established: %w: %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
