package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Listener names a slot of the pod's listener SOCKMAP.
type Listener uint32

const (
	Outbound Listener = 0 // ztunnel's :15001 in the pod
	Inbound  Listener = 1 // ztunnel's :15006 in the pod
)

// Capture is one pod's loaded sk_lookup program and maps.
type Capture struct {
	objs captureObjects
}

// Load loads the program and creates fresh maps.
func Load() (*Capture, error) {
	c := &Capture{}
	if err := loadCaptureObjects(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load capture program: %w", err)
	}
	return c, nil
}

// Close releases the program and map handles (pins and links keep them
// alive in the kernel).
func (c *Capture) Close() error { return c.objs.Close() }

// Attach attaches the program to the network namespace open at netnsFD.
// The returned link keeps it attached until closed or unpinned.
func (c *Capture) Attach(netnsFD int) (link.Link, error) {
	l, err := link.AttachNetNs(netnsFD, c.objs.ZmeshCapture)
	if err != nil {
		return nil, fmt.Errorf("attach sk_lookup to netns: %w", err)
	}
	return l, nil
}

// Enroll sets the pod's addresses and turns capture on. At most one IPv4 and
// one IPv6 address.
func (c *Capture) Enroll(podIPs ...netip.Addr) error {
	var cfg capturePodConfig
	cfg.Enrolled = 1
	for _, ip := range podIPs {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && cfg.HasIp4 == 0:
			cfg.HasIp4 = 1
			cfg.PodIp4 = ipWord(ip)
		case ip.Is6() && cfg.HasIp6 == 0:
			cfg.HasIp6 = 1
			cfg.PodIp6 = ipWords(ip)
		default:
			return fmt.Errorf("pod ip %s: at most one IPv4 and one IPv6 address", ip)
		}
	}
	if cfg.HasIp4 == 0 && cfg.HasIp6 == 0 {
		return errors.New("enroll: no pod ip")
	}
	return c.objs.Config.Update(uint32(0), cfg, ebpf.UpdateAny)
}

// Release turns capture off: every connection takes the kernel's own path.
func (c *Capture) Release() error {
	return c.objs.Config.Update(uint32(0), capturePodConfig{}, ebpf.UpdateAny)
}

// SetListener puts a listening socket (its fd) in a slot.
func (c *Capture) SetListener(slot Listener, fd uintptr) error {
	return setListener(c.objs.Listeners, slot, fd)
}

// ClearListener empties a slot: enrolled connections that need it are then
// dropped.
func (c *Capture) ClearListener(slot Listener) error {
	err := c.objs.Listeners.Delete(uint32(slot))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// AddProbeSource exempts inbound connections from addr (the node's address
// towards the pod, where kubelet probes come from).
func (c *Capture) AddProbeSource(addr netip.Addr) error {
	return c.objs.ProbeSources.Update(addrKey(addr), uint8(1), ebpf.UpdateAny)
}

// AddBypass lets one inbound 4-tuple (ztunnel's transparent dial to the
// app) through without capture. Add it after bind and before connect.
func (c *Capture) AddBypass(local, remote netip.AddrPort) error {
	return addBypass(c.objs.Bypass, local, remote)
}

// DeleteBypass removes a 4-tuple added by AddBypass.
func (c *Capture) DeleteBypass(local, remote netip.AddrPort) error {
	return deleteBypass(c.objs.Bypass, local, remote)
}

// Counters are the program's verdicts since it was loaded.
type Counters struct {
	Outbound, Inbound, Pass, Bypass, Drop uint64
}

// Counters sums the per-CPU counters.
func (c *Capture) Counters() (Counters, error) {
	var out Counters
	fields := []*uint64{&out.Outbound, &out.Inbound, &out.Pass, &out.Bypass, &out.Drop}
	for i, f := range fields {
		var perCPU []uint64
		if err := c.objs.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			*f += v
		}
	}
	return out, nil
}

// Pin pins the link and the maps under dir (one pod's directory in bpffs),
// so capture outlives the process that set it up.
func (c *Capture) Pin(l link.Link, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := l.Pin(filepath.Join(dir, "link")); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	for name, m := range c.maps() {
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	return nil
}

// Unpin removes the pins under dir and the directory; the program detaches
// once nothing else holds the link.
func Unpin(dir string) error {
	var errs []error
	for _, name := range []string{"link", "listeners", "config", "probe_sources", "bypass", "counters"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Capture) maps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"listeners":     c.objs.Listeners,
		"config":        c.objs.Config,
		"probe_sources": c.objs.ProbeSources,
		"bypass":        c.objs.Bypass,
		"counters":      c.objs.Counters,
	}
}

// ipWord returns an IPv4 address as the u32 the kernel compares with
// (network order in memory).
func ipWord(ip netip.Addr) uint32 {
	b := ip.As4()
	return nativeEndian.Uint32(b[:])
}

func ipWords(ip netip.Addr) [4]uint32 {
	b := ip.As16()
	var w [4]uint32
	for i := range w {
		w[i] = nativeEndian.Uint32(b[4*i:])
	}
	return w
}

func addrKey(a netip.Addr) captureAddrKey {
	a = a.Unmap()
	k := captureAddrKey{Family: 2}
	if a.Is6() {
		k.Family = 10
		k.Ip = ipWords(a)
	} else {
		k.Ip[0] = ipWord(a)
	}
	return k
}

func tupleKey(local, remote netip.AddrPort) captureTupleKey {
	l, r := addrKey(local.Addr()), addrKey(remote.Addr())
	return captureTupleKey{
		Family:     l.Family,
		LocalIp:    l.Ip,
		RemoteIp:   r.Ip,
		LocalPort:  uint32(local.Port()),
		RemotePort: uint32(remote.Port()),
	}
}

// MapFDs returns new descriptors of the listener SOCKMAP and the bypass map,
// owned by the caller: what ztunnel receives with a pod.
func (c *Capture) MapFDs() (listeners, bypass int, err error) {
	l, err := dupFD(c.objs.Listeners.FD())
	if err != nil {
		return -1, -1, err
	}
	b, err := dupFD(c.objs.Bypass.FD())
	if err != nil {
		closeFD(l)
		return -1, -1, err
	}
	return l, b, nil
}

// Pinned reports whether dir holds a pinned capture link.
func Pinned(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "link"))
	return err == nil
}

// OpenPinned opens the maps of a pod's pinned capture (after a restart, or
// to hand them to ztunnel). The program itself stays attached through the
// pinned link; the returned Capture holds only the maps.
func OpenPinned(dir string) (*Capture, error) {
	c := &Capture{}
	for name, dst := range map[string]**ebpf.Map{
		"listeners": &c.objs.Listeners, "config": &c.objs.Config, "probe_sources": &c.objs.ProbeSources,
		"bypass": &c.objs.Bypass, "counters": &c.objs.Counters,
	} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("open pinned %s in %s: %w", name, dir, err)
		}
		*dst = m
	}
	return c, nil
}
