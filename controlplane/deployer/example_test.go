package deployer_test

import (
	"context"
	"log"

	"k8s.io/client-go/kubernetes"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/controlplane/deployer"
)

// The wiring in zmeshd: the leader runs the controller.
func Example() {
	var (
		ctx  context.Context         // the leader's term (leaderelection's OnStartedLeading)
		kube kubernetes.Interface    // zmeshd's, with deploy/rbac/zmeshd.yaml
		gw   gatewayclient.Interface // from the same rest.Config
	)
	ctrl, err := deployer.New(kube, gw, deployer.Options{
		Image:      "zmesh/waypoint:dev",            // --waypoint-image
		XDSAddress: "zmeshd.istio-system.svc:15012", // what waypoints dial
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := ctrl.Run(ctx); err != nil { // returns when ctx ends
		log.Fatal(err)
	}
}
