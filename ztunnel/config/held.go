package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// StateFile is the name of the persisted config in ztunnel's state
// directory.
const StateFile = "xds-resources.pb"

// stateMagic starts a state file; the version changes with the format.
const stateMagic = "zmesh ztunnel xds state v1\n"

// maxStateFile bounds what LoadHeld reads: far above any mesh's config,
// far below what would hurt a node.
const maxStateFile = 512 << 20

// Held is the xDS resources ztunnel holds, as the control plane sent them
// (by type and name, with their versions): the form ztunnel persists at
// each change, so that a ztunnel restarted while the control plane is down
// serves the last synced config rather than none. Its zero value is not
// usable: build it with NewHeld or LoadHeld.
type Held struct {
	mu      sync.Mutex
	res     map[string]map[string]heldResource // by type, then name
	changed chan struct{}                      // 1-buffered: a change since the last Save
}

// heldResource is one resource as sent: its version and its payload's
// bytes. The payload's type is the map's; keeping the bytes rather than
// the Any spares a message and a type URL per resource, and the state
// store shares the same bytes for its config dumps.
type heldResource struct {
	version string
	body    []byte
}

// NewHeld returns an empty Held.
func NewHeld() *Held {
	return &Held{res: map[string]map[string]heldResource{}, changed: make(chan struct{}, 1)}
}

// Changed receives after each change, coalesced.
func (h *Held) Changed() <-chan struct{} { return h.changed }

// record keeps what the store accepted: a rejected resource keeps its last
// good copy, as the store does.
func (h *Held) record(typeURL string, updated []xdsclient.Resource, removed []string, rejected map[string]error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.res[typeURL]
	if m == nil {
		m = map[string]heldResource{}
		h.res[typeURL] = m
	}
	for _, name := range removed {
		if rejected[name] == nil {
			delete(m, name)
		}
	}
	for _, r := range updated {
		if rejected[r.Name] == nil {
			m[r.Name] = heldResource{version: r.Version, body: r.Body.GetValue()}
		}
	}
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// Versions returns the version of every resource held, by type and name:
// a restarted client's initial resource versions, so that the control
// plane sends only what changed and removes what is gone.
func (h *Held) Versions() map[string]map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]map[string]string{}
	for t, m := range h.res {
		out[t] = map[string]string{}
		for name, r := range m {
			out[t][name] = r.version
		}
	}
	return out
}

// Update decodes every resource held into a whole-state update.
func (h *Held) Update() (state.Update, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
	for t, m := range h.res {
		for name, r := range m {
			var err error
			switch t {
			case xdsclient.TypeAddress:
				a := &workload.Address{}
				err = proto.Unmarshal(r.body, a)
				u.Addresses[name] = a
				if u.Encoded == nil {
					u.Encoded = map[string][]byte{}
				}
				u.Encoded[name] = r.body
			case xdsclient.TypeAuthorization:
				p := &security.Authorization{}
				err = proto.Unmarshal(r.body, p)
				u.Policies[name] = p
			default:
				err = fmt.Errorf("unsupported type %s", t)
			}
			if err != nil {
				return state.Update{}, fmt.Errorf("%s %q: %w", t, name, err)
			}
		}
	}
	return u, nil
}

// Save writes what is held to path atomically (a temporary file in the
// same directory, synced, then renamed over path): a crash leaves the old
// file or the new one, never half of one.
func (h *Held) Save(path string) error {
	var buf bytes.Buffer
	buf.WriteString(stateMagic)
	h.mu.Lock()
	for _, t := range slices.Sorted(maps.Keys(h.res)) {
		m := h.res[t]
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: t}
		for _, name := range slices.Sorted(maps.Keys(m)) {
			r := m[name]
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: r.version, Resource: &anypb.Any{TypeUrl: t, Value: r.body}})
		}
		if _, err := protodelim.MarshalTo(&buf, resp); err != nil {
			h.mu.Unlock()
			return fmt.Errorf("encode %s: %w", t, err)
		}
	}
	h.mu.Unlock()
	return writeAtomic(path, buf.Bytes())
}

func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("persist config: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the rename itself survives a crash
		d.Close()
	}
	return nil
}

// LoadHeld reads a file Save wrote. A missing file is os.ErrNotExist
// (errors.Is); a file that does not decode is an error naming what is
// wrong, and nothing of it is used.
func LoadHeld(path string) (*Held, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(io.LimitReader(f, maxStateFile))
	magic := make([]byte, len(stateMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != stateMagic {
		return nil, fmt.Errorf("%s: not a ztunnel state file of this version", path)
	}
	h := NewHeld()
	for {
		resp := &discoveryv3.DeltaDiscoveryResponse{}
		err := protodelim.UnmarshalFrom(r, resp)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: decode: %w", path, err)
		}
		t := resp.GetTypeUrl()
		if !slices.Contains(Types, t) {
			return nil, fmt.Errorf("%s: type %q is not one ztunnel subscribes to", path, t)
		}
		if h.res[t] != nil {
			return nil, fmt.Errorf("%s: type %s appears twice", path, t)
		}
		m := map[string]heldResource{}
		for i, res := range resp.GetResources() {
			if res.GetName() == "" || res.GetResource().GetTypeUrl() != t {
				return nil, fmt.Errorf("%s: %s resources[%d]: no name, or a payload of another type", path, t, i)
			}
			m[res.GetName()] = heldResource{version: res.GetVersion(), body: res.GetResource().GetValue()}
		}
		h.res[t] = m
	}
	return h, nil
}
