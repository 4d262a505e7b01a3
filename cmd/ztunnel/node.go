package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// podInfo is what ztunnel knows of its own pod, for the xDS node.
type podInfo struct {
	name, namespace string
	ips             []netip.Addr
	node, cluster   string
	network         string
}

// xdsNode is ztunnel's node as Istio's ztunnel sends it, so that an istiod
// (or zmeshd) reads it the same way: the id
// "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local" and the
// metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME and CLUSTER_ID (and
// NETWORK when set).
func xdsNode(p podInfo) (*corev3.Node, error) {
	ip := "127.0.0.1"
	ips := make([]string, 0, len(p.ips))
	for _, a := range p.ips {
		ips = append(ips, a.String())
	}
	if len(ips) > 0 {
		ip = ips[0]
	}
	meta := map[string]any{
		"NAME":         p.name,
		"NAMESPACE":    p.namespace,
		"INSTANCE_IPS": strings.Join(ips, ","),
		"NODE_NAME":    p.node,
		"CLUSTER_ID":   p.cluster,
	}
	if p.network != "" {
		meta["NETWORK"] = p.network
	}
	m, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("xds node metadata: %w", err)
	}
	id := fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", ip, p.name, p.namespace, p.namespace)
	return &corev3.Node{Id: id, Metadata: m}, nil
}

// parseIPs reads a comma-separated list of IPs (INSTANCE_IP may carry one
// per family).
func parseIPs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address", f)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// hostIPs are the fallback for a ztunnel not told its pod IP (not run in a
// pod): the global unicast addresses of this network namespace.
func hostIPs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr().IsGlobalUnicast() {
			out = append(out, pfx.Addr().Unmap())
		}
	}
	return out
}

// hostname is the fallback pod name: in a pod it is the pod's name.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "ztunnel"
	}
	return h
}
