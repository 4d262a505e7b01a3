package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// PodMaps are one pod's capture maps as ztunnel holds them: adopted from
// the descriptors ZDS delivers (ztunnel never opens bpffs). ztunnel puts its
// listeners in the SOCKMAP and its transparent dials in the bypass map.
type PodMaps struct {
	listeners *ebpf.Map
	bypass    *ebpf.Map
}

// NewPodMaps adopts a SOCKMAP and a bypass map descriptor; PodMaps owns
// them from then on.
func NewPodMaps(sockmapFD, bypassFD int) (*PodMaps, error) {
	l, err := ebpf.NewMapFromFD(sockmapFD)
	if err != nil {
		return nil, fmt.Errorf("sockmap descriptor: %w", err)
	}
	b, err := ebpf.NewMapFromFD(bypassFD)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("bypass descriptor: %w", err)
	}
	if l.Type() != ebpf.SockMap || b.Type() != ebpf.Hash {
		l.Close()
		b.Close()
		return nil, fmt.Errorf("descriptors are a %v and a %v, want a SOCKMAP and a hash", l.Type(), b.Type())
	}
	return &PodMaps{listeners: l, bypass: b}, nil
}

// Close releases the descriptors.
func (m *PodMaps) Close() error {
	return errors.Join(m.bypass.Close(), m.listeners.Close())
}

// SetListener puts a listening socket (its fd) in a slot. A newer ztunnel
// overwrites an older one's entry.
func (m *PodMaps) SetListener(slot Listener, fd uintptr) error {
	return setListener(m.listeners, slot, fd)
}

// AddBypass lets one inbound 4-tuple through without capture.
func (m *PodMaps) AddBypass(local, remote netip.AddrPort) error {
	return addBypass(m.bypass, local, remote)
}

// DeleteBypass removes a 4-tuple added by AddBypass.
func (m *PodMaps) DeleteBypass(local, remote netip.AddrPort) error {
	return deleteBypass(m.bypass, local, remote)
}

func setListener(m *ebpf.Map, slot Listener, fd uintptr) error {
	if err := m.Update(uint32(slot), uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("put listener %d in sockmap: %w", slot, err)
	}
	return nil
}

func addBypass(m *ebpf.Map, local, remote netip.AddrPort) error {
	return m.Update(tupleKey(local, remote), uint8(1), ebpf.UpdateAny)
}

func deleteBypass(m *ebpf.Map, local, remote netip.AddrPort) error {
	err := m.Delete(tupleKey(local, remote))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}
