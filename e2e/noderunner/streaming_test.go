package noderunner

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/internal/kubetest"
)

// The kubelet's streaming API, as the API server calls it: a command runs
// in the pod's network namespace with its streams and exit code, a port is
// forwarded to the pod's loopback, logs are tailed; a caller the API
// server does not allow nodes/proxy is refused.
func TestStreamingExecPortForwardLogs(t *testing.T) {
	env := kubetest.ForTest(t)
	ns, err := netenv.NewNS("stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ln, err := ns.Listen("tcp", "127.0.0.1:7777")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "hello from the pod")
			c.Close()
		}
	}()
	logFile := filepath.Join(t.TempDir(), "pod.log")
	if err := os.WriteFile(logFile, []byte("one\ntwo\nthree\nfour\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rp := &RunningPod{UID: "uid-1", Namespace: "app", Name: "web", NS: ns}

	ca := newTestCA(t)
	s := &Streaming{Node: "node-1", Client: env.Client, ClientCAs: ca.pool,
		Pod: func(namespace, name string) (*RunningPod, string) {
			if namespace == "app" && name == "web" {
				return rp, logFile
			}
			return nil, ""
		}}
	tln, err := tls.Listen("tcp", "127.0.0.1:0", s.TLSConfig(ca.issue(t, "node-1", nil)))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(t.Context(), tln)
	base := "https://" + tln.Addr().String()
	// The API server's kubelet client identity, and someone else.
	apiserver := ca.config(t, base, "kube-apiserver-kubelet-client", []string{"system:masters"})
	mallory := ca.config(t, base, "mallory", nil)

	t.Run("exec", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		err := execIn(t, apiserver, "/exec/app/web/app", strings.NewReader("typed\n"), &stdout, &stderr,
			"sh", "-c", "readlink /proc/self/ns/net; cat; echo oops >&2; exit 3")
		var ce utilexec.CodeExitError
		if !errors.As(err, &ce) || ce.Code != 3 {
			t.Fatalf("exec: %v, want exit code 3", err)
		}
		var want string
		if err := ns.Do(func() error {
			var err error
			want, err = os.Readlink("/proc/thread-self/ns/net")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got := stdout.String(); got != want+"\ntyped\n" {
			t.Errorf("stdout %q, want the pod's network namespace %q and the input", got, want)
		}
		if stderr.String() != "oops\n" {
			t.Errorf("stderr %q", stderr.String())
		}
		// With the pod's uid in the path, and a wrong one.
		stdout.Reset()
		if err := execIn(t, apiserver, "/exec/app/web/uid-1/app", nil, &stdout, nil, "echo", "ok"); err != nil || stdout.String() != "ok\n" {
			t.Errorf("exec with the uid: %q, %v", stdout.String(), err)
		}
		if err := execIn(t, apiserver, "/exec/app/web/uid-2/app", nil, &stdout, nil, "true"); err == nil {
			t.Error("exec with another uid ran")
		}
		if err := execIn(t, apiserver, "/exec/app/nobody/app", nil, &stdout, nil, "true"); err == nil {
			t.Error("exec in a pod the node does not run succeeded")
		}
		if err := execIn(t, mallory, "/exec/app/web/app", nil, &stdout, nil, "true"); err == nil || !strings.Contains(err.Error(), `user "mallory" may not create nodes/proxy`) {
			t.Errorf("mallory's exec: %v, want forbidden", err)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		got, err := forwardOnce(t, apiserver, "/portForward/app/web", 7777)
		if err != nil || got != "hello from the pod\n" {
			t.Fatalf("port-forward read %q, %v", got, err)
		}
		if _, err := forwardOnce(t, mallory, "/portForward/app/web", 7777); err == nil {
			t.Error("mallory's port-forward worked")
		}
	})

	t.Run("logs", func(t *testing.T) {
		for _, tc := range []struct{ query, want string }{
			{"", "one\ntwo\nthree\nfour\n"},
			{"?tailLines=2", "three\nfour\n"},
			{"?tailLines=0", ""},
			{"?tailLines=10", "one\ntwo\nthree\nfour\n"},
		} {
			code, body := getLogs(t, apiserver, "/containerLogs/app/web/app"+tc.query)
			if code != http.StatusOK || body != tc.want {
				t.Errorf("logs%s: %d %q, want %q", tc.query, code, body, tc.want)
			}
		}
		if code, _ := getLogs(t, mallory, "/containerLogs/app/web/app"); code != http.StatusForbidden {
			t.Errorf("mallory's logs: %d, want 403", code)
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		if resp, err := c.Get(base + "/containerLogs/app/web/app"); err == nil {
			resp.Body.Close()
			t.Errorf("a caller without a certificate got %s", resp.Status)
		}
	})
}

func execIn(t *testing.T, cfg *rest.Config, path string, in io.Reader, out, errw io.Writer, cmd ...string) error {
	t.Helper()
	u, err := url.Parse(cfg.Host + path)
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{}
	for _, c := range cmd {
		q.Add("command", c)
	}
	if in != nil {
		q.Set("input", "1")
	}
	q.Set("output", "1")
	if errw != nil {
		q.Set("error", "1")
	}
	u.RawQuery = q.Encode()
	ex, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(t, 20*time.Second)
	defer cancel()
	return ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: in, Stdout: out, Stderr: errw})
}

// forwardOnce forwards a local port to the pod's port and reads what one
// connection to it gets.
func forwardOnce(t *testing.T, cfg *rest.Config, path string, port int) (string, error) {
	t.Helper()
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cfg.Host + path)
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return "", err
	case <-time.After(20 * time.Second):
		t.Fatal("port-forward never became ready")
	}
	ports, err := fw.GetPorts()
	if err != nil {
		return "", err
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func getLogs(t *testing.T, cfg *rest.Config, path string) (int, string) {
	t.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(cfg.Host + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// testCA issues the node's serving certificate and callers' client
// certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cluster ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

var serial int64 = 1

func (ca *testCA) issuePEM(t *testing.T, cn string, groups []string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: groups},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func (ca *testCA) issue(t *testing.T, cn string, groups []string) tls.Certificate {
	c, k := ca.issuePEM(t, cn, groups)
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// config is a client of the node's API with a certificate for cn.
func (ca *testCA) config(t *testing.T, host, cn string, groups []string) *rest.Config {
	c, k := ca.issuePEM(t, cn, groups)
	return &rest.Config{Host: host, TLSClientConfig: rest.TLSClientConfig{CertData: c, KeyData: k, CAData: ca.pem}}
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
