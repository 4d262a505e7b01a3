// Package plugin is zmesh-cni, the chained CNI plugin: on ADD it asks the
// node agent to capture an ambient pod and returns only once the agent says
// the pod is captured and ztunnel has taken it (or that the pod is not in
// the mesh). It is deliberately thin: the agent decides and acts.
package plugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Failure policies when the agent cannot be reached on ADD.
const (
	// FailClosed (default) fails ADD: the runtime retries, and no pod of
	// an ambient namespace starts without capture.
	FailClosed = "fail"
	// FailOpen lets the pod start uncaptured; for clusters that prefer
	// availability while the agent is down.
	FailOpen = "allow"
)

// Config is the plugin's entry in the conflist.
type Config struct {
	types.PluginConf
	// AgentSocket is the agent's unix socket (absolute path).
	AgentSocket string `json:"agent_socket"`
	// ExcludeNamespaces are never sent to the agent (default kube-system).
	ExcludeNamespaces []string `json:"exclude_namespaces,omitempty"`
	// FailurePolicy is FailClosed or FailOpen.
	FailurePolicy string `json:"failure_policy,omitempty"`
	// AgentTimeoutSeconds bounds one call to the agent (default 60: ADD
	// waits for ztunnel to fetch the pod's certificate).
	AgentTimeoutSeconds int `json:"agent_timeout_seconds,omitempty"`
}

// DefaultAgentSocket is where the agent listens on a node.
const DefaultAgentSocket = "/var/run/zmesh/cni.sock"

// parseConfig decodes and validates the plugin's configuration, naming the
// field at fault.
func parseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("zmesh-cni: parse network configuration: %w", err)
	}
	if conf.CNIVersion == "" {
		return nil, fmt.Errorf("zmesh-cni: cniVersion: missing")
	}
	if ok, err := version.GreaterThanOrEqualTo(conf.CNIVersion, "0.4.0"); err != nil || !ok {
		return nil, fmt.Errorf("zmesh-cni: cniVersion %q: want 0.4.0 or later", conf.CNIVersion)
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = DefaultAgentSocket
	}
	if !filepath.IsAbs(conf.AgentSocket) {
		return nil, fmt.Errorf("zmesh-cni: agent_socket %q: must be an absolute path", conf.AgentSocket)
	}
	switch conf.FailurePolicy {
	case "":
		conf.FailurePolicy = FailClosed
	case FailClosed, FailOpen:
	default:
		return nil, fmt.Errorf("zmesh-cni: failure_policy %q: want %q or %q", conf.FailurePolicy, FailClosed, FailOpen)
	}
	if conf.ExcludeNamespaces == nil {
		conf.ExcludeNamespaces = []string{"kube-system"}
	}
	switch {
	case conf.AgentTimeoutSeconds == 0:
		conf.AgentTimeoutSeconds = 60
	case conf.AgentTimeoutSeconds < 0 || conf.AgentTimeoutSeconds > 600:
		return nil, fmt.Errorf("zmesh-cni: agent_timeout_seconds %d: want 1..600", conf.AgentTimeoutSeconds)
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("zmesh-cni: prevResult: %w", err)
		}
	}
	return conf, nil
}

func (c *Config) timeout() time.Duration { return time.Duration(c.AgentTimeoutSeconds) * time.Second }

func (c *Config) excluded(ns string) bool {
	for _, x := range c.ExcludeNamespaces {
		if x == ns {
			return true
		}
	}
	return false
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}
