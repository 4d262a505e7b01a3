// Package l7 is zmesh's end-to-end suite for the waypoint: scenarios from
// Istio's and Gateway API's traffic-management tasks, YAML applied with
// kubectl and waypoints made with `zmeshctl waypoint apply`, on one shared
// cluster (e2e/cluster) with zmesh installed from its Helm chart: the
// chart's zmeshd deploys each waypoint and the node runners run its pod as
// the waypoint binary built from this tree.
// Scenarios other than TestCanary run in parallel, each in namespaces of
// its own with its own waypoint.
package l7

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
	os.Exit(cluster.RunSuite(m, "e2e/l7", cluster.Options{App: podapp.Env, FromChart: true}, func(c *cluster.Cluster) { mesh = c }))
}
