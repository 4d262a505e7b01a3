// Package cniapi is the small JSON protocol between the zmesh-cni plugin
// and zmesh-cni-agent, over HTTP on the agent's unix socket. It is shared by
// both sides and imports nothing heavier than the standard library, so the
// plugin binary stays small and free of k8s.io/*.
package cniapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Paths on the agent's socket.
const (
	PathAdd   = "/v1/cni/add"
	PathDel   = "/v1/cni/del"
	PathCheck = "/v1/cni/check"
)

// Pod identifies a pod the runtime is setting up.
type Pod struct {
	UID         string   `json:"uid"`
	Name        string   `json:"name"`
	Namespace   string   `json:"namespace"`
	ContainerID string   `json:"container_id"`
	Netns       string   `json:"netns"` // path, e.g. /var/run/netns/cni-…
	IPs         []string `json:"ips,omitempty"`
}

// Validate checks a request before anything acts on it.
func (p *Pod) Validate() error {
	var missing []string
	for name, v := range map[string]string{"uid": p.UID, "name": p.Name, "namespace": p.Namespace} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("pod: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// AddResponse answers an add: Captured is false for a pod that is not in the
// mesh (nothing was done); an error is an HTTP error.
type AddResponse struct {
	Captured bool   `json:"captured"`
	Reason   string `json:"reason,omitempty"`
}

// ErrorResponse is the body of a non-200 answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Client talks to the agent.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the agent's socket at path.
func NewClient(path string, timeout time.Duration) *Client {
	return &Client{hc: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// ErrUnreachable wraps failures to reach the agent at all (as opposed to
// the agent answering with an error).
var ErrUnreachable = errors.New("zmesh-cni-agent unreachable")

// Do posts req to path and decodes the answer into resp (may be nil).
func (c *Client) Do(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://zmesh-cni-agent"+path, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := c.hc.Do(hreq)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer hresp.Body.Close()
	dec := json.NewDecoder(http.MaxBytesReader(nil, hresp.Body, 1<<20))
	if hresp.StatusCode != http.StatusOK {
		var e ErrorResponse
		if dec.Decode(&e) != nil || e.Error == "" {
			e.Error = hresp.Status
		}
		return errors.New(e.Error)
	}
	if resp == nil {
		return nil
	}
	if err := dec.Decode(resp); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}
