package cluster

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// WaypointImage is the image zmeshd puts in the waypoint Deployments it
// creates; the node runners run it as the waypoint binary built here.
const WaypointImage = "zmesh/waypoint:e2e"

// forwardControlPlane gives the node's pods zmeshd at
// ControlPlaneAddr:port, forwarded to zmeshd's port on the root
// namespace's loopback (pods route to the node's host namespace through
// their gateway). It stands in for zmeshd's Service until the harness
// routes Services.
func (c *Cluster) forwardControlPlane(n *Node, port string) error {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("zmeshd port %q: %w", port, err)
	}
	f, err := netenv.Forward(n.Host, netip.AddrPortFrom(ControlPlaneAddr, uint16(p)), "127.0.0.1:"+port)
	if err != nil {
		return fmt.Errorf("%s: control-plane forwarder: %w", n.Name, err)
	}
	n.forward = f
	return nil
}
