package translate

import (
	"testing"

	"github.com/zmesh/zmesh/ztunnel/state"
)

// acceptedByZtunnel loads an Output into ztunnel's own state store, which
// validates every workload, service and policy and its resource name, and
// checks that every policy a workload lists exists.
func acceptedByZtunnel(t testing.TB, out *Output) *state.Snapshot {
	t.Helper()
	st := state.NewStore()
	if err := st.Replace(state.Update{Addresses: out.Addresses, Policies: out.Authorizations}); err != nil {
		t.Fatalf("ztunnel rejects the output: %v", err)
	}
	snap := st.Snapshot()
	for _, w := range snap.Workloads() {
		if _, missing := snap.PoliciesFor(w); len(missing) > 0 {
			t.Errorf("workload %s lists policies that are not sent: %v", w.UID, missing)
		}
		for key := range w.Services {
			if snap.Service(key) == nil {
				t.Errorf("workload %s backs service %s, which is not sent", w.UID, key)
			}
		}
	}
	return snap
}
