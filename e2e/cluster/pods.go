package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/podapp"
)

// Kubectl runs kubectl as the cluster's admin.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.Env.KubectlRun(ctx, "", args...)
}

// Pod is a running pod as the test sees it: where it runs and how to reach
// into it.
type Pod struct {
	*noderunner.RunningPod
	Node *Node
}

// Pod finds a pod started by a node runner.
func (c *Cluster) Pod(namespace, name string) *Pod {
	for _, n := range c.Nodes {
		if p := n.Kubelet.Pod(namespace, name); p != nil {
			return &Pod{RunningPod: p, Node: n}
		}
	}
	return nil
}

// Node returns the node of that name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// WaitPods waits until every pod of the namespace is Running and Ready and
// known to its node runner, and returns them by name.
func (c *Cluster) WaitPods(ctx context.Context, namespace string, want int) (map[string]*Pod, error) {
	var out map[string]*Pod
	err := waitUntil(ctx, 60*time.Second, func() bool {
		pods, err := c.Env.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != want {
			return false
		}
		out = map[string]*Pod{}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || !podReady(&p) {
				return false
			}
			rp := c.Pod(namespace, p.Name)
			if rp == nil || rp.UID != p.UID {
				return false
			}
			out[p.Name] = rp
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for %d running pods in %s: %w", want, namespace, err)
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Redirected reports whether the pod carries the agent's
// ambient.istio.io/redirection: enabled annotation.
func (c *Cluster) Redirected(ctx context.Context, namespace, name string) (bool, error) {
	p, err := c.Env.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	return p.Annotations["ambient.istio.io/redirection"] == "enabled", nil
}

// Echo opens a TCP connection from the pod to dst (the app's echo port or
// a service), reads the greeting and returns which pod answered and the
// address it saw. Plain TCP: whatever the mesh does is invisible to it.
func (p *Pod) Echo(ctx context.Context, dst netip.AddrPort) (pod, from string, err error) {
	return p.EchoWithin(ctx, dst, 3*time.Second)
}

// EchoWithin is Echo with budget for the connection and the greeting.
func (p *Pod) EchoWithin(ctx context.Context, dst netip.AddrPort, budget time.Duration) (pod, from string, err error) {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	conn, err := p.NS.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(budget))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("read greeting from %s: %w", dst, err)
	}
	pod, from, ok := podapp.ParseGreeting(line)
	if !ok {
		return "", "", fmt.Errorf("unexpected greeting %q", line)
	}
	return pod, from, nil
}

// Open opens a long-lived echo connection from the pod.
func (p *Pod) Open(ctx context.Context, dst netip.AddrPort) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := p.NS.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	c := &Conn{Conn: conn, r: bufio.NewReader(conn)}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.r.ReadString('\n'); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Conn is a long-lived echo connection.
type Conn struct {
	net.Conn
	r *bufio.Reader
}

// Ping sends a line and waits for its echo.
func (c *Conn) Ping(timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

// HTTPClient is an HTTP client whose connections start in the pod's
// network namespace (so ztunnel captures them) and are kept alive between
// requests, as an application's would be.
func (p *Pod) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.NS.Dial(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 4,
		},
	}
}

// HTTPGet makes an HTTP request from the pod, on a new connection.
func (p *Pod) HTTPGet(ctx context.Context, url string) (int, string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return p.NS.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// Addr is the pod's address with a port.
func (p *Pod) Addr(port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IP, port) }

// Metrics returns the node's ztunnel /metrics.
func (n *Node) Metrics(ctx context.Context) (string, error) {
	if n.inHost {
		return n.hostGet(ctx, "http://"+n.ZtunnelMetrics+"/metrics")
	}
	return HTTPGet(ctx, "http://"+n.ZtunnelMetrics+"/metrics")
}

// hostGet fetches a URL from the node's host namespace (a pod's endpoint
// seen as the kubelet sees it), failing on a non-200 answer.
func (n *Node) hostGet(ctx context.Context, url string) (string, error) {
	return getIn(ctx, n.Host, url)
}

// getIn fetches a URL from inside a network namespace, failing on a
// non-200 answer.
func getIn(ctx context.Context, ns *netenv.NS, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       ns.Dial,
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// Say sends a line and waits for its echo.
func (c *Conn) Say(line string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo %q", got)
	}
	return nil
}
