package main

import (
	"strings"
	"testing"
)

func TestFlagsNameTheProblem(t *testing.T) {
	cases := []struct {
		args []string
		want string // "" = valid
	}{
		{[]string{"--local-config", "m.yaml", "--ca-address", "127.0.0.1:1"}, "--node"},
		{[]string{"--node", "n", "--ca-address", "127.0.0.1:1"}, "exactly one of --local-config and --xds-address"},
		{[]string{"--node", "n", "--local-config", "m.yaml", "--xds-address", "x:1"}, "exactly one of"},
		{[]string{"--node", "n", "--local-config", "m.yaml"}, "--ca-address"},
		{[]string{"--node", "n", "--xds-address", "zmeshd:15012"}, ""},
		{[]string{"--node", "n", "--local-config", "m.yaml", "--ca-address", "127.0.0.1:1"}, ""},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-max-conns-per-peer", "0"}, "--hbone-max-conns-per-peer"},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-idle-timeout", "-1s"}, "--hbone-idle-timeout"},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-idle-timeout", "2m", "--hbone-max-streams-per-peer", "100"}, ""},
	}
	t.Setenv("NODE_NAME", "")
	for _, c := range cases {
		f, err := parseFlags(c.args)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: err %v, want one mentioning %q", c.args, err, c.want)
		case c.want == "" && f.caAddr == "":
			t.Errorf("%v: no CA address", c.args)
		}
	}
}

// The xDS node is Istio ztunnel's: the id's four "~" parts and the
// metadata istiod reads, from the flags or their environment variables.
func TestXDSNodeIsIstios(t *testing.T) {
	t.Setenv("POD_NAME", "ztunnel-x7k2p")
	t.Setenv("POD_NAMESPACE", "istio-system")
	t.Setenv("INSTANCE_IP", "10.244.1.5")
	t.Setenv("CLUSTER_ID", "")
	f, err := parseFlags([]string{"--node", "node-a", "--xds-address", "zmeshd:15012"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := xdsNode(podInfo{name: f.podName, namespace: f.podNamespace, ips: f.instanceIPs, node: f.node, cluster: f.clusterID})
	if err != nil {
		t.Fatal(err)
	}
	if want := "ztunnel~10.244.1.5~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local"; n.GetId() != want {
		t.Errorf("id = %q, want %q", n.GetId(), want)
	}
	want := map[string]string{
		"NAME": "ztunnel-x7k2p", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.244.1.5",
		"NODE_NAME": "node-a", "CLUSTER_ID": "Kubernetes",
	}
	fields := n.GetMetadata().GetFields()
	for k, v := range want {
		if got := fields[k].GetStringValue(); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
	if kind, _, _ := strings.Cut(n.GetId(), "~"); kind != "ztunnel" {
		t.Errorf("the id's kind is %q, want ztunnel", kind)
	}

	// Not in a pod: the hostname and this host's addresses stand in.
	t.Setenv("POD_NAME", "")
	t.Setenv("INSTANCE_IP", "")
	f, err = parseFlags([]string{"--node", "node-a", "--xds-address", "zmeshd:15012", "--instance-ip", "fd00::5,10.0.0.5"})
	if err != nil {
		t.Fatal(err)
	}
	n, _ = xdsNode(podInfo{name: f.podName, namespace: f.podNamespace, ips: f.instanceIPs, node: f.node, cluster: f.clusterID})
	if got := n.GetMetadata().GetFields()["INSTANCE_IPS"].GetStringValue(); got != "fd00::5,10.0.0.5" {
		t.Errorf("INSTANCE_IPS = %q", got)
	}
	if f.podName == "" || !strings.HasPrefix(n.GetId(), "ztunnel~fd00::5~"+f.podName+".istio-system~") {
		t.Errorf("id = %q with pod name %q", n.GetId(), f.podName)
	}
	if _, err := parseFlags([]string{"--node", "n", "--xds-address", "x:1", "--instance-ip", "10.0.0.300"}); err == nil || !strings.Contains(err.Error(), "--instance-ip") {
		t.Errorf("a bad --instance-ip: %v", err)
	}
}
