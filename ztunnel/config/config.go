// Package config feeds ztunnel's state store from its two sources: the
// control plane's delta xDS stream (XDSHandler) and a local YAML file
// (WatchFile). Both keep the last good state when given a bad one.
package config

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// XDSHandler decodes xDS resources into state updates.
type XDSHandler struct {
	Store *state.Store
	// Held, if set, keeps every resource the store accepted, as sent: what
	// ztunnel persists.
	Held *Held
	// Release, if set, returns the memory a large update leaves behind to
	// the operating system once it is applied.
	Release *MemoryRelease
}

// Apply implements xdsclient.Handler: each resource that does not decode or
// validate is rejected by name (a NACK); the rest are applied. A rejected
// policy is enforced as a deny-all over its scope until a good version
// arrives (state.Store.Apply).
func (h XDSHandler) Apply(typeURL string, updated []xdsclient.Resource, removed []string) map[string]error {
	u := state.Update{}
	rejected := map[string]error{}
	switch typeURL {
	case xdsclient.TypeAddress:
		u.Addresses = make(map[string]*workload.Address, len(updated))
		u.Encoded = make(map[string][]byte, len(updated))
		u.RemovedAddresses = removed
		for _, r := range updated {
			m := &workload.Address{}
			if err := r.Body.UnmarshalTo(m); err != nil {
				rejected[r.Name] = fmt.Errorf("decode: %w", err)
				continue
			}
			u.Addresses[r.Name] = m
			// The store keeps these bytes for config dumps, and Held the
			// same ones for persisting: one copy serves both.
			u.Encoded[r.Name] = r.Body.GetValue()
		}
	case xdsclient.TypeAuthorization:
		u.Policies = make(map[string]*security.Authorization, len(updated))
		u.RemovedPolicies = removed
		for _, r := range updated {
			m := &security.Authorization{}
			if err := r.Body.UnmarshalTo(m); err != nil {
				if u.BadPolicies == nil {
					u.BadPolicies = map[string]state.BadPolicy{}
				}
				u.BadPolicies[r.Name] = state.BadPolicy{Err: fmt.Errorf("decode: %w", err)}
				continue
			}
			u.Policies[r.Name] = m
		}
	default:
		for _, r := range updated {
			rejected[r.Name] = fmt.Errorf("unsupported type %s", typeURL)
		}
		return rejected
	}
	for name, err := range h.Store.Apply(u) {
		rejected[name] = err
	}
	if h.Held != nil {
		h.Held.record(typeURL, updated, removed, rejected)
	}
	if h.Release != nil {
		size := 0
		for _, r := range updated {
			size += len(r.Body.GetValue())
		}
		h.Release.note(size)
	}
	if len(rejected) == 0 {
		return nil
	}
	return rejected
}

// Types are the xDS subscriptions ztunnel makes, policies first so that a
// workload never arrives naming a policy that is still on its way.
var Types = []string{xdsclient.TypeAuthorization, xdsclient.TypeAddress}

// WatchFile loads path into store, then checks it every interval until ctx
// ends, replacing the state when the content changes. The first load must
// succeed; a later bad version is logged and the last good one keeps
// serving, except that a policy the bad version names and which is itself
// rejected is enforced as a deny-all over its scope (see
// state.Store.Replace): a rejected ALLOW must not leave the last good
// state's wider rule, or no rule, in force. A file that is not YAML keeps
// the last good state whole, having no policy to read. loaded is called
// after each successful load.
func WatchFile(ctx context.Context, path string, store *state.Store, interval time.Duration, log *slog.Logger, loaded func()) error {
	last, err := loadFile(path, store)
	if err != nil {
		return err
	}
	if loaded != nil {
		loaded()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var pending []byte
	var pendingAt time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil || bytes.Equal(data, last) {
			pending = nil
			continue
		}
		// (A nil pending must not equal an empty read: bytes.Equal would
		// say it does.)
		// Apply a change only once two reads an interval apart agree: a file
		// caught while being rewritten (truncated, half written) must not
		// wipe the state.
		if pending == nil || !bytes.Equal(data, pending) {
			pending, pendingAt = data, time.Now()
			continue
		}
		if time.Since(pendingAt) < interval {
			continue // ticks can bunch up; agree across a whole interval
		}
		pending, last = nil, data
		if err := apply(path, data, store); err != nil {
			log.Error("local config rejected; the last good one keeps serving, and a rejected policy denies every connection in its scope", "path", path, "reason", err.Error())
			continue
		}
		log.Info("local config reloaded", "path", path)
		if loaded != nil {
			loaded()
		}
	}
}

func loadFile(path string, store *state.Store) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return data, apply(path, data, store)
}

func apply(path string, data []byte, store *state.Store) error {
	u, err := state.ParseLocalConfig(data)
	if err == nil {
		err = store.Replace(u)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
