package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// appPath is the PATH of commands exec'd in the App's pods: a directory
// holding the echo images' client (this executable, which answers to the
// name), then the system's.
func (c *Cluster) appPath() (string, error) {
	dir := filepath.Join(c.Dir, "app-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if err := os.Symlink(exe, filepath.Join(dir, podapp.ClientName)); err != nil && !os.IsExist(err) {
		return "", err
	}
	return dir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", nil
}

// serveStreaming serves n's streaming API (kubectl exec, logs,
// port-forward through the API server) on the root namespace's loopback,
// where the API server reaches it, with a serving certificate the cluster
// CA signs, to callers holding a certificate of the same CA (the API
// server's kubelet client certificate). The Node advertises the address
// once n.Kubelet registers it.
func (c *Cluster) serveStreaming(ctx context.Context, n *Node) error {
	if c.stopStreaming == nil {
		// The API server's kubelet client may use the kubelet API, as
		// kubeadm allows it (the runners ask with SubjectAccessReviews).
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-apiserver-kubelet-api-admin"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:kubelet-api-admin"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "kube-apiserver-kubelet-client"}},
		}
		if _, err := c.Env.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("binding the API server's kubelet client: %w", err)
		}
	}
	cert, err := c.Env.KubeletServingCert(n.Name, net.IPv4(127, 0, 0, 1))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(c.Env.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("cluster CA %s: no certificate", c.Env.CAFile)
	}
	s := n.Kubelet.Streaming(pool)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", s.TLSConfig(cert))
	if err != nil {
		return fmt.Errorf("%s streaming API: %w", n.Name, err)
	}
	n.Kubelet.StreamingEndpoint = netip.MustParseAddrPort(ln.Addr().String())
	if c.stopStreaming == nil {
		var ctx context.Context
		ctx, c.stopStreaming = context.WithCancel(context.Background())
		c.streamCtx = ctx
	}
	c.streams.Go(func() {
		if err := s.Serve(c.streamCtx, ln); err != nil {
			c.say("%s streaming API: %v", n.Name, err)
		}
	})
	return nil
}
