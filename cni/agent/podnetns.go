package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNetnsNotFound is returned when no running process sits in a network
// namespace holding the address.
var ErrNetnsNotFound = errors.New("no network namespace holds the pod's address")

// FindNetns finds the network namespace of a running pod by its address:
// it walks the processes under procRoot (/proc), visits each distinct
// network namespace once, and returns a /proc/<pid>/ns/net path of the one
// with ip on an interface. This is how a pod that was running before its
// namespace joined the mesh is found without the runtime's help.
func FindNetns(procRoot string, ip netip.Addr) (string, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", procRoot, err)
	}
	seen := map[uint64]bool{}
	family := netlink.FAMILY_V4
	if ip.Unmap().Is6() {
		family = netlink.FAMILY_V6
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		path := filepath.Join(procRoot, e.Name(), "ns", "net")
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || seen[st.Ino] {
			continue // gone already, or a namespace visited
		}
		seen[st.Ino] = true
		if holds(path, family, ip.Unmap()) {
			return path, nil
		}
	}
	return "", fmt.Errorf("%s: %w", ip, ErrNetnsNotFound)
}

func holds(path string, family int, ip netip.Addr) bool {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return false
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return false
	}
	defer nl.Close()
	addrs, err := nl.AddrList(nil, family)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true
		}
	}
	return false
}
