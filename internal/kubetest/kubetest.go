// Package kubetest runs a real etcd + kube-apiserver + kube-controller-manager
// + kube-scheduler for tests, as plain processes on loopback: no kubelet,
// no container runtime, no pod ever runs. The binaries are built from the
// pinned Kubernetes and etcd Go modules once per machine and cached
// (Build); each Env has its own state directory, ports and certificates,
// so packages running in parallel do not share one. The `make
// kube-testenv` target (hack/kube-testenv) builds the cache ahead of the
// tests and can run one control plane for a shell.
//
// What tests must know: pods are bound by the scheduler only to Node
// objects the test creates and makes Ready; their status is the test's
// to write. EndpointSlices list only pods on Nodes that exist. The
// pod-garbage-collector and node-lifecycle controllers are off (no
// evictions of fake nodes), and with them the TaintNodesByCondition
// admission plugin, so new Nodes carry no not-ready taint nobody would
// lift. The kubernetes Service has no endpoints. A CRD just created takes
// a few seconds before it is served (WaitEstablished).
package kubetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	// CAKeyFile is the CA's key: a test signs with it what a cluster's
	// CA would sign, e.g. a node runner's serving certificate.
	CAKeyFile string
	// Token is a static admin bearer token.
	Token string
	// Kubectl is the path of a kubectl of the same version.
	Kubectl string
	// StateDir holds the logs (logs/<process>.log), certificates (pki/)
	// and etcd's data; Stop removes it unless KUBE_TESTENV_KEEP=1.
	StateDir string
	// Config and Client are the admin's.
	Config *rest.Config
	Client kubernetes.Interface

	procs []*proc
}

// Options change how Start runs the control plane.
type Options struct {
	// ServiceCIDR is the ClusterIP range (default 10.96.0.0/16).
	ServiceCIDR string
	// Extra flags per process, appended to Start's: "etcd",
	// "kube-apiserver", "kube-controller-manager", "kube-scheduler".
	ExtraArgs map[string][]string
	// Timeout bounds the wait for readiness (default 3 min: etcd and the
	// API server start in seconds on a quiet machine, but a loaded 2-core
	// CI machine running several packages in parallel once needed more
	// than 90 s).
	Timeout time.Duration
}

// proc is one started process.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Start builds the binaries if needed and starts a control plane in a
// fresh state directory with Options from the environment
// (KUBE_TESTENV_{ETCD,APISERVER,CONTROLLER_MANAGER,SCHEDULER}_ARGS, word
// split). Stop it with Stop.
func Start(ctx context.Context) (*Env, error) {
	o := Options{ExtraArgs: map[string][]string{}}
	for name, env := range map[string]string{"etcd": "ETCD", "kube-apiserver": "APISERVER",
		"kube-controller-manager": "CONTROLLER_MANAGER", "kube-scheduler": "SCHEDULER"} {
		o.ExtraArgs[name] = strings.Fields(os.Getenv("KUBE_TESTENV_" + env + "_ARGS"))
	}
	o.ServiceCIDR = os.Getenv("KUBE_TESTENV_SERVICE_CIDR")
	return StartWith(ctx, o)
}

// StartWith is Start with explicit options.
func StartWith(ctx context.Context, o Options) (*Env, error) {
	if err := Build(ctx, nil); err != nil {
		return nil, err
	}
	state, err := os.MkdirTemp("", "zmesh-kube-*")
	if err != nil {
		return nil, err
	}
	e := &Env{StateDir: state}
	if err := e.start(ctx, o); err != nil {
		if serr := e.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, err
	}
	return e, nil
}

func (e *Env) start(ctx context.Context, o Options) error {
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/16"
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	_, svcNet, err := net.ParseCIDR(o.ServiceCIDR)
	if err != nil || svcNet.IP.To4() == nil {
		return fmt.Errorf("service CIDR %q: want an IPv4 CIDR", o.ServiceCIDR)
	}
	// The kubernetes Service takes the range's first address.
	svcIP := make(net.IP, 4)
	copy(svcIP, svcNet.IP.To4())
	svcIP[3]++
	for _, d := range []string{"logs", "etcd", "certs-kcm", "certs-scheduler"} {
		if err := os.MkdirAll(filepath.Join(e.StateDir, d), 0o700); err != nil {
			return err
		}
	}
	pki, err := newPKI(filepath.Join(e.StateDir, "pki"), svcIP)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	e.APIServer = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	e.CAFile, e.CAKeyFile = pki.path("ca.crt"), pki.path("ca.key")
	e.Kubectl = filepath.Join(BinDir(), "kubectl")
	e.Kubeconfig = filepath.Join(e.StateDir, "admin.kubeconfig")
	if e.Token, err = randomToken(); err != nil {
		return err
	}
	if err := os.WriteFile(pki.path("tokens.csv"), fmt.Appendf(nil, "%s,kubetest-admin,kubetest-admin,\"system:masters\"\n", e.Token), 0o600); err != nil {
		return err
	}
	for file, user := range map[string]string{e.Kubeconfig: "admin",
		filepath.Join(e.StateDir, "controller-manager.kubeconfig"): "controller-manager",
		filepath.Join(e.StateDir, "scheduler.kubeconfig"):          "scheduler"} {
		if err := pki.kubeconfig(file, e.APIServer, user); err != nil {
			return err
		}
	}
	schedCfg := filepath.Join(e.StateDir, "scheduler.yaml")
	if err := os.WriteFile(schedCfg, fmt.Appendf(nil, `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %s
leaderElection:
  leaderElect: false
`, filepath.Join(e.StateDir, "scheduler.kubeconfig")), 0o600); err != nil {
		return err
	}

	deadline := time.Now().Add(o.Timeout)
	admin, insecure, err := httpClients(pki)
	if err != nil {
		return err
	}
	peer := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	if err := e.launch("etcd", o.ExtraArgs,
		"--name=kubetest", "--data-dir="+filepath.Join(e.StateDir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubetest="+peer, "--initial-cluster-state=new",
		// Test data need not survive a crash of the machine.
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := e.waitOK(ctx, deadline, insecure, etcdURL+"/health"); err != nil {
		return err
	}
	if err := e.launch("kube-apiserver", o.ExtraArgs,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+pki.dir,
		"--tls-cert-file="+pki.path("apiserver.crt"), "--tls-private-key-file="+pki.path("apiserver.key"),
		"--client-ca-file="+pki.path("ca.crt"),
		"--token-auth-file="+pki.path("tokens.csv"),
		"--kubelet-client-certificate="+pki.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+pki.path("apiserver-kubelet-client.key"),
		// Node runners serve their streaming API with certificates the
		// cluster CA signs, on the root namespace's loopback, which their
		// Nodes advertise as ExternalIP (their InternalIP is on an underlay
		// the API server cannot reach).
		"--kubelet-certificate-authority="+pki.path("ca.crt"),
		"--kubelet-preferred-address-types=ExternalIP,InternalIP,Hostname",
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.path("sa.pub"),
		"--service-account-signing-key-file="+pki.path("sa.key"),
		"--service-cluster-ip-range="+o.ServiceCIDR,
		// Nothing would serve the kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=TaintNodesByCondition",
		"--allow-privileged=true",
		"--profiling=false"); err != nil {
		return err
	}
	if err := e.waitOK(ctx, deadline, admin, e.APIServer+"/readyz"); err != nil {
		return err
	}
	if err := e.launch("kube-controller-manager", o.ExtraArgs,
		"--kubeconfig="+filepath.Join(e.StateDir, "controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--cert-dir="+filepath.Join(e.StateDir, "certs-kcm"),
		"--leader-elect=false",
		"--controllers=*,-pod-garbage-collector-controller,-node-lifecycle-controller",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+pki.path("sa.key"),
		"--root-ca-file="+pki.path("ca.crt"),
		"--cluster-signing-cert-file="+pki.path("ca.crt"), "--cluster-signing-key-file="+pki.path("ca.key"),
		"--profiling=false"); err != nil {
		return err
	}
	if err := e.launch("kube-scheduler", o.ExtraArgs,
		"--config="+schedCfg,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--cert-dir="+filepath.Join(e.StateDir, "certs-scheduler")); err != nil {
		return err
	}
	for _, w := range []struct {
		c   *http.Client
		url string
	}{
		{admin, e.APIServer + "/api/v1/namespaces/default"},
		{insecure, "https://127.0.0.1:" + strconv.Itoa(kcmPort) + "/healthz"},
		{insecure, "https://127.0.0.1:" + strconv.Itoa(schedPort) + "/readyz"},
		// Pods cannot be created in a namespace before its default
		// ServiceAccount exists.
		{admin, e.APIServer + "/api/v1/namespaces/default/serviceaccounts/default"},
	} {
		if err := e.waitOK(ctx, deadline, w.c, w.url); err != nil {
			return err
		}
	}
	if e.Config, err = clientcmd.BuildConfigFromFlags("", e.Kubeconfig); err != nil {
		return err
	}
	e.Client, err = kubernetes.NewForConfig(e.Config)
	return err
}

// httpClients are one that presents the admin's certificate and trusts
// the CA, and one that checks nothing (the controller-manager's and
// scheduler's health ports serve self-signed certificates).
func httpClients(p *pki) (admin, insecure *http.Client, err error) {
	cert, err := tls.LoadX509KeyPair(p.path("admin.crt"), p.path("admin.key"))
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	admin = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}}}
	insecure = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return admin, insecure, nil
}

// launch starts name from the cache with args, its output to
// logs/<name>.log, in a process group of its own.
func (e *Env) launch(name string, extra map[string][]string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(e.StateDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(BinDir(), name), append(args, extra[name]...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if name == "etcd" {
		// etcd takes ETCD_* variables as flags: hide the caller's.
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "ETCD_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return nil
}

// waitOK polls url until it answers 200, failing early when a started
// process has exited (with the end of its log) or at deadline.
func (e *Env) waitOK(ctx context.Context, deadline time.Time, c *http.Client, url string) error {
	last := "no answer"
	for {
		for _, p := range e.procs {
			if p.exited() {
				return fmt.Errorf("%s exited while waiting for %s: %s\n%s", p.name, url, p.cmd.ProcessState,
					tailFile(filepath.Join(e.StateDir, "logs", p.name+".log"), 30))
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s (last: %s)", url, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct ports below the usual ephemeral range
// (so an outgoing connection does not take one before its server binds
// it) that are free now.
func freePorts(n int) ([]int, error) {
	var ports []int
	seen := map[int]bool{}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 10000 {
			return nil, errors.New("no free ports in 20000-31999")
		}
		p := 20000 + rand.IntN(12000)
		if seen[p] {
			continue
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// Stop ends the processes (scheduler and controller-manager first, etcd
// last; SIGTERM, then SIGKILL after 15 s) and removes the state directory
// unless KUBE_TESTENV_KEEP=1.
func (e *Env) Stop() error {
	for i := len(e.procs) - 1; i >= 0; i-- {
		p := e.procs[i]
		if p.exited() {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	e.procs = nil
	if os.Getenv("KUBE_TESTENV_KEEP") == "1" || e.StateDir == "" {
		return nil
	}
	return os.RemoveAll(e.StateDir)
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

// Exports are shell lines that point kubectl and tests at e.
func (e *Env) Exports() string {
	var b strings.Builder
	for _, kv := range [][2]string{{"KUBECONFIG", e.Kubeconfig}, {"KUBE_TESTENV_APISERVER", e.APIServer},
		{"KUBE_TESTENV_CA_FILE", e.CAFile}, {"KUBE_TESTENV_TOKEN", e.Token}, {"KUBE_TESTENV_STATE", e.StateDir},
		{"KUBE_TESTENV_BIN", BinDir()}, {"KUBECTL", e.Kubectl}} {
		fmt.Fprintf(&b, "export %s=%q\n", kv[0], kv[1])
	}
	return b.String()
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), n)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
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
