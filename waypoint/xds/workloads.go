package xds

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/waypoint/telemetry"
)

// TypeAddress is workload discovery's type, the one ztunnel subscribes to:
// the waypoint reads it only to name its clients' workloads in telemetry.
const TypeAddress = xdsclient.TypeAddress

// applyAddresses updates the workload index from one response. Services
// are not needed (the waypoint's own configuration names its services) and
// are skipped; a name that turns from a workload into a service is
// forgotten.
func (h *handler) applyAddresses(updated []xdsclient.Resource, removed []string) map[string]error {
	rejected := map[string]error{}
	for _, r := range updated {
		var a workload.Address
		if err := r.Body.UnmarshalTo(&a); err != nil {
			rejected[r.Name] = fmt.Errorf("decode: %v", err)
			continue
		}
		wl := a.GetWorkload()
		if wl == nil {
			h.workloads.Remove(r.Name)
			continue
		}
		w, err := telemetryWorkload(wl)
		if err != nil {
			rejected[r.Name] = err
			continue
		}
		if !h.workloads.Set(r.Name, w) && !h.workloadsFull {
			// Telemetry only: the waypoint serves on, labelling the
			// clients it cannot name "unknown".
			h.workloadsFull = true
			h.log.Warn("xds: workload index full; further clients are labelled unknown", "workloads", h.workloads.Len())
		}
	}
	for _, name := range removed {
		h.workloads.Remove(name)
	}
	if h.workloads.Len() == 0 {
		h.workloadsFull = false
	}
	return rejected
}

// telemetryWorkload reads what telemetry needs of a workload, with its
// identity formed as ztunnel forms it (trust domain and service account
// defaulting as in Istio).
func telemetryWorkload(wl *workload.Workload) (telemetry.Workload, error) {
	w := telemetry.Workload{
		Name: wl.GetWorkloadName(), Namespace: wl.GetNamespace(),
		CanonicalService: wl.GetCanonicalName(), CanonicalRevision: wl.GetCanonicalRevision(),
		Cluster: wl.GetClusterId(),
	}
	if w.Name == "" {
		w.Name = wl.GetName()
	}
	for i, b := range wl.GetAddresses() {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return w, fmt.Errorf("workload.addresses[%d]: %d bytes is not an IP address", i, len(b))
		}
		w.Addresses = append(w.Addresses, a.Unmap())
	}
	if wl.GetNamespace() == "" {
		return w, nil // no identity: never matches a client
	}
	td, sa := wl.GetTrustDomain(), wl.GetServiceAccount()
	if td == "" {
		td = identity.DefaultTrustDomain
	}
	if sa == "" {
		sa = "default"
	}
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return w, fmt.Errorf("workload.trust_domain: %w", err)
	}
	id, err := identity.WorkloadID(t, wl.GetNamespace(), sa)
	if err != nil {
		return w, fmt.Errorf("workload.service_account: %w", err)
	}
	w.Identity = id.String()
	return w, nil
}
