package identity

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain of a mesh that names none, as in Istio.
const DefaultTrustDomain = "cluster.local"

// ErrNotWorkloadID is returned for a SPIFFE ID whose path is not /ns/<ns>/sa/<sa>.
var ErrNotWorkloadID = errors.New("not a workload SPIFFE ID (want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")

// Workload names a Kubernetes workload identity: a service account in a
// namespace, in a trust domain.
type Workload struct {
	TrustDomain    spiffeid.TrustDomain
	Namespace      string
	ServiceAccount string
}

// WorkloadID builds spiffe://<td>/ns/<ns>/sa/<sa>. The namespace and service
// account must be valid SPIFFE path segments.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("workload id: empty trust domain")
	}
	if namespace == "" {
		return spiffeid.ID{}, errors.New("workload id: empty namespace")
	}
	if serviceAccount == "" {
		return spiffeid.ID{}, errors.New("workload id: empty service account")
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id for %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// MustWorkloadID is WorkloadID for constants in tests and tools; it panics on
// invalid input.
func MustWorkloadID(td, namespace, serviceAccount string) spiffeid.ID {
	id, err := WorkloadID(spiffeid.RequireTrustDomainFromString(td), namespace, serviceAccount)
	if err != nil {
		panic(err)
	}
	return id
}

// ParseWorkload parses a SPIFFE ID string and splits a workload ID into its
// parts. It rejects IDs that are valid SPIFFE but not /ns/<ns>/sa/<sa>.
func ParseWorkload(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("parse spiffe id %q: %w", s, err)
	}
	return WorkloadOf(id)
}

// WorkloadOf splits a parsed SPIFFE ID into a Workload.
func WorkloadOf(id spiffeid.ID) (Workload, error) {
	var w Workload
	w.TrustDomain = id.TrustDomain()
	// Segments are validated by spiffeid: no empty segments, no dots, no
	// percent-encoding, so a plain split is exact.
	segs := splitPath(id.Path())
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return Workload{}, fmt.Errorf("%q: %w", id.String(), ErrNotWorkloadID)
	}
	w.Namespace, w.ServiceAccount = segs[1], segs[3]
	return w, nil
}

// ID returns the workload's SPIFFE ID.
func (w Workload) ID() (spiffeid.ID, error) {
	return WorkloadID(w.TrustDomain, w.Namespace, w.ServiceAccount)
}

func splitPath(p string) []string {
	if p == "" {
		return nil
	}
	var segs []string
	start := 1 // skip the leading '/'
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			segs = append(segs, p[start:i])
			start = i + 1
		}
	}
	return segs
}
