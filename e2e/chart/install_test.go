package chart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestInstalledFromChart: every part of zmesh runs as the chart's pods,
// placed by the controllers — a ztunnel and an agent on each node, the
// agent in the node's namespace and ztunnel in one of its own — and the
// agent chained zmesh-cni into each node's conflist through the chart's
// hostPath.
func TestInstalledFromChart(t *testing.T) {
	pods, err := mesh.Env.Client.CoreV1().Pods("istio-system").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]map[string]*corev1.Pod{}
	var zmeshd int
	for i := range pods.Items {
		p := &pods.Items[i]
		app := p.Labels["app"]
		if app == "zmeshd" {
			zmeshd++
			continue
		}
		if perNode[p.Spec.NodeName] == nil {
			perNode[p.Spec.NodeName] = map[string]*corev1.Pod{}
		}
		perNode[p.Spec.NodeName][app] = p
		owner := metav1.GetControllerOf(p)
		if owner == nil || owner.Kind != "DaemonSet" {
			t.Errorf("pod %s is not a DaemonSet's: %v", p.Name, owner)
		}
		t.Logf("%s on %s: hostNetwork=%v podIP=%s hostIP=%s", p.Name, p.Spec.NodeName, p.Spec.HostNetwork, p.Status.PodIP, p.Status.HostIP)
	}
	if zmeshd != 1 {
		t.Errorf("%d zmeshd pods, want the chart's Deployment's 1", zmeshd)
	}
	for _, n := range mesh.Nodes {
		zt, agent := perNode[n.Name]["ztunnel"], perNode[n.Name]["zmesh-cni-agent"]
		if zt == nil || agent == nil {
			t.Errorf("%s: ztunnel %v, agent %v: want one of each", n.Name, zt != nil, agent != nil)
			continue
		}
		if zt.Spec.HostNetwork || zt.Status.PodIP == n.Addr.String() || !n.PodCIDR.Contains(mustAddr(t, zt.Status.PodIP)) {
			t.Errorf("%s: ztunnel at %s (hostNetwork %v): want a pod address of %s", n.Name, zt.Status.PodIP, zt.Spec.HostNetwork, n.PodCIDR)
		}
		if !agent.Spec.HostNetwork || agent.Status.PodIP != n.Addr.String() {
			t.Errorf("%s: agent at %s: want the node's address %s (hostNetwork)", n.Name, agent.Status.PodIP, n.Addr)
		}
		conf, err := os.ReadFile(filepath.Join(n.CNIConf, "10-podnet.conflist"))
		if err != nil || !strings.Contains(string(conf), `"zmesh-cni"`) {
			t.Errorf("%s: conflist in the node's tree does not chain zmesh-cni: %v\n%s", n.Name, err, conf)
		}
	}
	out := mustKubectl(t, "-n", "istio-system", "get", "daemonsets,deployments", "-o", "wide")
	t.Logf("\n%s", out)
}
