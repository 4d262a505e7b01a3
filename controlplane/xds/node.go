package xds

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// NodeInfo is what a proxy says about itself in its xDS node. It is shown
// (/debug/syncz, logs) and never trusted: what a proxy is sent and which
// certificates it may get follow from the credential it authenticated
// with (see Authenticate and the CA), not from anything in here.
//
// Two forms of node id are read:
//
//   - zmesh's "<kind>~<node>", e.g. "ztunnel~node-a", with the node name
//     also in the NODE_NAME metadata;
//   - Istio ztunnel's "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>",
//     with the metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME and
//     CLUSTER_ID; the node name comes from NODE_NAME.
//
// Anything else is kept as its id and kind, with NODE_NAME if sent.
type NodeInfo struct {
	// ID is the node id as sent (cut at maxNodeField bytes).
	ID string `json:"id"`
	// Kind is the id's first field: "ztunnel", "zmesh-cni-agent", ...
	Kind string `json:"kind,omitempty"`
	// Node is the Kubernetes node the proxy says it runs on.
	Node string `json:"node,omitempty"`
	// Pod, Namespace and IPs are the proxy's own pod, in Istio's form.
	Pod       string   `json:"pod,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	IPs       []string `json:"ips,omitempty"`
	Cluster   string   `json:"cluster,omitempty"`
}

// A proxy's node is held for as long as its stream: only these bounded
// parts of it are kept, whatever size of metadata it sent.
const (
	maxNodeField = 256
	maxNodeIPs   = 8
)

// ParseNode reads n (nil gives the zero NodeInfo).
func ParseNode(n *corev3.Node) NodeInfo {
	meta := func(key string) string {
		return bounded(n.GetMetadata().GetFields()[key].GetStringValue())
	}
	info := NodeInfo{ID: bounded(n.GetId()), Node: meta("NODE_NAME"), Cluster: meta("CLUSTER_ID")}
	parts := strings.Split(info.ID, "~")
	if len(parts) > 1 {
		info.Kind = parts[0]
	}
	switch len(parts) {
	case 2: // <kind>~<node>
		if parts[1] != "" {
			info.Node = parts[1]
		}
	case 4: // <kind>~<ip>~<pod>.<ns>~<ns>.svc.<domain>
		ns, _, _ := strings.Cut(parts[3], ".")
		if pod, ok := strings.CutSuffix(parts[2], "."+ns); ok && ns != "" {
			info.Pod, info.Namespace = pod, ns
		}
		if parts[1] != "" {
			info.IPs = []string{parts[1]}
		}
	}
	if v := meta("NAME"); v != "" {
		info.Pod = v
	}
	if v := meta("NAMESPACE"); v != "" {
		info.Namespace = v
	}
	if v := meta("INSTANCE_IPS"); v != "" {
		info.IPs = nil
		for ip := range strings.SplitSeq(v, ",") {
			if ip = strings.TrimSpace(ip); ip != "" && len(info.IPs) < maxNodeIPs {
				info.IPs = append(info.IPs, ip)
			}
		}
	}
	return info
}

func bounded(s string) string {
	if len(s) > maxNodeField {
		return strings.ToValidUTF8(s[:maxNodeField], "")
	}
	return s
}
