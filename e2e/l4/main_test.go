// Package l4 is zmesh's end-to-end suite for the L4 ambient mesh: every
// scenario applies YAML from e2e/testdata with kubectl, as a user following
// Istio's documentation would, against one shared cluster (e2e/cluster: a
// real API server, zmeshd, and two network-namespace nodes each with its
// agent, ztunnel and node runner), and prints what the mesh did. Each
// scenario works in namespaces of its own, so they are independent.
package l4

import (
	"os"
	"testing"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

var mesh *cluster.Cluster

func TestMain(m *testing.M) {
	if podapp.IsApp() {
		podapp.Main() // this process is a pod's app, started by a node runner
		return
	}
	os.Exit(cluster.RunSuite(m, "e2e/l4", cluster.Options{App: podapp.Env, FromChart: true}, func(c *cluster.Cluster) { mesh = c }))
}
