package conformance

import (
	"os"
	"testing"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

var mesh *cluster.Cluster

func TestMain(m *testing.M) {
	switch {
	case podapp.IsClient():
		podapp.ClientMain() // the echo images' client, exec'd in a pod by the suite
	case podapp.IsApp():
		podapp.Main() // this process is a pod's app, started by a node runner
	}
	os.Exit(cluster.RunSuite(m, "conformance", cluster.Options{App: podapp.Env, FromChart: true}, func(c *cluster.Cluster) { mesh = c }))
}
