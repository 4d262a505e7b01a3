// Package chart is the end-to-end suite of zmesh installed from its Helm
// chart: the harness (e2e/cluster with FromChart) renders
// deploy/charts/zmesh with Helm's SDK and applies it to a real API server,
// the controller manager makes the DaemonSet and Deployment pods, the
// scheduler places them and the node runners run them as a kubelet would.
// The scenarios check that what the chart installs is a working mesh:
// enrolment, HBONE across nodes, policy, and a waypoint.
package chart

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
	os.Exit(cluster.RunSuite(m, "e2e/chart", cluster.Options{App: podapp.Env, FromChart: true}, func(c *cluster.Cluster) { mesh = c }))
}
