package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The package doc's promise: no Kubernetes client packages in the binary
// (sigs.k8s.io/yaml is a YAML library).
func TestNoKubernetesClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") {
			t.Errorf("zmeshctl depends on %s", pkg)
		}
	}
}
