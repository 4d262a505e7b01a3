package l4

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestZtunnelConfig: `zmeshctl ztunnel-config workloads --node NODE`
// without --ztunnel-admin reaches the admin port of the ztunnel pod on
// that node (it listens on the pod's loopback only) through the API
// server's port-forward, as istioctl does, and lists that node's
// workloads: the pod scheduled there, not the one on the other node.
func TestZtunnelConfig(t *testing.T) {
	const manifest = `apiVersion: v1
kind: Namespace
metadata:
  name: ztc
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: here, namespace: ztc}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: there, namespace: ztc}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
`
	mesh.ApplyManifest(t, manifest, "ztc")
	pods := waitPods(t, "ztc", 2)
	if n := pods["here"].Node.Name; n != "node-1" {
		t.Fatalf("pod here runs on %s, want node-1", n)
	}

	args := []string{"ztunnel-config", "workloads", "--node", "node-1", "-n", "ztc"}
	var last string
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := mesh.ZmeshctlRun(t.Context(), args...)
		if err != nil {
			last = fmt.Sprintf("%v: %s", err, out)
		} else if row := rowOf(out, "here"); row == nil {
			last = fmt.Sprintf("no row for pod here in:\n%s", out)
		} else if row[3] != "node-1" {
			last = fmt.Sprintf("pod here on %q, want node-1:\n%s", row[3], out)
		} else if rowOf(out, "there") != nil {
			t.Fatalf("--node node-1 lists pod there, which runs on node-2:\n%s", out)
		} else {
			t.Logf("$ zmeshctl %s\n%s", strings.Join(args, " "), strings.TrimSpace(out))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("zmeshctl %s: %s", strings.Join(args, " "), last)
		}
		time.Sleep(time.Second)
	}
}

// rowOf is the fields of the table row whose POD-NAME (second column)
// is name.
func rowOf(table, name string) []string {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[1] == name {
			return f
		}
	}
	return nil
}
