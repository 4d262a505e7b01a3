package main

import (
	"os/exec"
	"strings"
	"testing"
)

// zmeshctl reads what the data planes serve over HTTP, so it needs none of
// their code: of our trees it may use only the wire types of zmeshd's
// debug endpoint (controlplane/xds's ProxyStatus). The ztunnel dump's
// shape is kept in step by the tests, which build dumps with ztunnel/admin.
func TestNoDataPlaneCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/zmesh/zmesh/"
	allowed := map[string]bool{mod + "controlplane/xds": true}
	for _, pkg := range strings.Fields(string(out)) {
		for _, tree := range []string{"ztunnel", "waypoint", "cni", "controlplane", "e2e"} {
			if (pkg == mod+tree || strings.HasPrefix(pkg, mod+tree+"/")) && !allowed[pkg] {
				t.Errorf("zmeshctl depends on %s", pkg)
			}
		}
	}
}
