package kube

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/internal/kubetest"
)

// TestNodesCarryOnlyTheirLabels: snapshots list the nodes with their
// labels (their topology) and nothing else, also after a status change;
// a label change is published.
func TestNodesCarryOnlyTheirLabels(t *testing.T) {
	env := kubetest.ForTest(t)
	snaps := runSource(t, env)
	next := func(what string) *model.Snapshot {
		t.Helper()
		select {
		case s := <-snaps:
			return s
		case <-time.After(20 * time.Second):
			t.Fatalf("no snapshot with %s", what)
			return nil
		}
	}

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{
		"topology.kubernetes.io/region": "us", "topology.kubernetes.io/zone": "us-1"}}}
	if _, err := env.Client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var n *corev1.Node
	for n == nil {
		n = next("node-a").Node("node-a")
	}
	if n.Labels["topology.kubernetes.io/zone"] != "us-1" {
		t.Errorf("node labels %v", n.Labels)
	}
	// The node lifecycle controller writes the node too: retry on
	// conflicts, as a kubelet does.
	nodes := env.Client.CoreV1().Nodes()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(t.Context(), "node-a", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
		_, err = nodes.UpdateStatus(t.Context(), cur, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(t.Context(), "node-a", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Labels["topology.kubernetes.io/zone"] = "us-2"
		_, err = nodes.Update(t.Context(), cur, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for n == nil || n.Labels["topology.kubernetes.io/zone"] != "us-2" {
		n = next("node-a's new zone").Node("node-a")
	}
	if len(n.Status.Conditions) != 0 || len(n.ManagedFields) != 0 {
		t.Errorf("node kept more than its labels: %+v", n)
	}
}

// TestNodeUpdatesThatPush: only a change of a node's labels makes a new
// snapshot; its status (heartbeats every few seconds on a real cluster)
// and taints do not.
func TestNodeUpdatesThatPush(t *testing.T) {
	node := func(zone string, ready corev1.ConditionStatus) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"topology.kubernetes.io/zone": zone}},
			Spec:   corev1.NodeSpec{Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}
	}
	strip := func(n *corev1.Node) any {
		o, err := nodeLabelsOnly(n)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	a := strip(node("z1", corev1.ConditionTrue))
	if n := a.(*corev1.Node); len(n.Status.Conditions) != 0 || len(n.Spec.Taints) != 0 || n.Labels["topology.kubernetes.io/zone"] != "z1" {
		t.Errorf("stripped node %+v", n)
	}
	if nodeLabelsChanged(a, strip(node("z1", corev1.ConditionFalse))) {
		t.Error("a status change pushes")
	}
	if !nodeLabelsChanged(a, strip(node("z2", corev1.ConditionTrue))) {
		t.Error("a label change does not push")
	}
}
