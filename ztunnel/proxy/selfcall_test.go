package proxy_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/zmesh/zmesh/ztunnel/proxy"
)

func TestCheckDestinationRefusesZtunnelPorts(t *testing.T) {
	for port, reserved := range map[uint16]bool{
		15001: true, 15006: true, 15008: true, 15080: true, 15053: true,
		15000: true, 15020: true, 15021: true,
		80: false, 8080: false, 15002: false, 15009: false, 15090: false, 15010: false, 0: false, 65535: false,
	} {
		dst := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port)
		err := proxy.CheckDestination(dst)
		if got := errors.Is(err, proxy.ErrSelfCall); got != reserved || proxy.ReservedPort(port) != reserved {
			t.Errorf("port %d: CheckDestination = %v, ReservedPort = %v; want reserved=%v", port, err, proxy.ReservedPort(port), reserved)
		}
	}
}
