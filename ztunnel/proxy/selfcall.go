package proxy

import (
	"errors"
	"fmt"
	"net/netip"
)

// Ports of ztunnel's own that are not in this package's listeners: the DNS
// proxy, and the admin, metrics and readiness servers.
const (
	DNSPort       = 15053
	AdminPort     = 15000
	MetricsPort   = 15020
	ReadinessPort = 15021
)

// ErrSelfCall is a destination on one of ztunnel's own ports. Serving it
// would make ztunnel connect to itself: a CONNECT to a pod's 15006 turns
// into a plaintext inbound connection that dials 15006 again, and so on,
// each hop a new socket, for as long as the client keeps the first one.
var ErrSelfCall = errors.New("destination is one of ztunnel's own ports")

// ReservedPort reports whether port is one of ztunnel's: never a
// destination of the traffic it proxies.
func ReservedPort(port uint16) bool {
	switch port {
	case OutboundPort, InboundPlainPort, InboundPort, SOCKS5Port, DNSPort,
		AdminPort, MetricsPort, ReadinessPort:
		return true
	}
	return false
}

// CheckDestination refuses a reserved port as the destination of an
// inbound connection (the CONNECT authority, the original destination of
// a plaintext one, the app dial). Every such port belongs to ztunnel or
// the mesh, never to the app behind it.
func CheckDestination(dst netip.AddrPort) error {
	if ReservedPort(dst.Port()) {
		return fmt.Errorf("%w: %s", ErrSelfCall, dst)
	}
	return nil
}
