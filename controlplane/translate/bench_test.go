package translate

import (
	"slices"
	"testing"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
)

// BenchmarkTranslate: 10 000 pods in 2 000 services across 100 namespaces.
func BenchmarkTranslate(b *testing.B) {
	s := modeltest.Mesh(100, 20, 5)
	opts := Options{Mesh: model.DefaultMesh()}
	b.ReportAllocs()
	for b.Loop() {
		Translate(opts, s)
	}
}

func TestBigSnapshot(t *testing.T) {
	s := modeltest.Mesh(100, 20, 5)
	out := Translate(Options{Mesh: model.DefaultMesh()}, s)
	// 10 000 workloads, 2 000 services; 2 000 policies and the STRICT one
	// of each namespace's PeerAuthentication.
	if got, want := len(out.Addresses), 12000; got != want {
		t.Errorf("%d addresses, want %d", got, want)
	}
	if got, want := len(out.Authorizations), 2100; got != want {
		t.Errorf("%d authorizations, want %d", got, want)
	}
	snap := acceptedByZtunnel(t, out)
	w := snap.Workload(PodUID("Kubernetes", "ns-042", "app-07-7d9f8c6b5-00003"))
	if w == nil || !w.HBONE() || len(w.Policies) != 2 || w.Services["ns-042/app-07.ns-042.svc.cluster.local"][80] != 8080 {
		t.Errorf("workload: %+v", w)
	}
}

// BenchmarkIncrementalPodChange: one pod flips Ready per op, as an
// informer-fed source hands it over (only that pod's pointer is new).
func BenchmarkIncrementalPodChange(b *testing.B) {
	s := modeltest.Mesh(100, 20, 5)
	opts := Options{Mesh: model.DefaultMesh()}
	var inc Incremental
	inc.Translate(opts, s)
	i := len(s.Pods) / 2
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		next := *s
		next.Pods = slices.Clone(s.Pods)
		p := s.Pods[i].DeepCopy()
		if n%2 == 0 {
			p.Status.Conditions = nil
		}
		next.Pods[i] = p
		inc.Translate(opts, &next)
	}
	if inc.full != 1 {
		b.Fatalf("%d full translations, want 1", inc.full)
	}
}
