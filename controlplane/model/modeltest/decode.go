package modeltest

import (
	"bytes"
	"testing"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Decode reads a golden input (Kubernetes, Istio and Gateway API YAML) as
// the directory source would: pods completed as file pods are, the
// snapshot sorted. A document that does not decode fails the test.
func Decode(t testing.TB, input []byte) *model.Snapshot {
	t.Helper()
	snap := &model.Snapshot{}
	if errs := snap.Decode(bytes.NewReader(input), "input.yaml"); len(errs) > 0 {
		t.Fatalf("input.yaml: %v", errs)
	}
	for _, p := range snap.Pods {
		model.NormalizeFilePod(p)
	}
	snap.Sort()
	return snap
}
