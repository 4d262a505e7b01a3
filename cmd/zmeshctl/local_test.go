package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindLocalBinaries(t *testing.T) {
	full := t.TempDir()
	for _, b := range localBinaries {
		if err := os.WriteFile(filepath.Join(full, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	partial := t.TempDir()
	os.WriteFile(filepath.Join(partial, "zmeshd"), []byte("#!/bin/sh\n"), 0o755)
	checkout := t.TempDir()
	os.WriteFile(filepath.Join(checkout, "go.mod"), []byte("module github.com/zmesh/zmesh\n\ngo 1.26\n"), 0o644)
	sub := filepath.Join(checkout, "e2e", "demo")
	os.MkdirAll(sub, 0o755)
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "go.mod"), []byte("module example.com/other\n"), 0o644)

	for _, tc := range []struct {
		name               string
		binFlag, self, cwd string
		wantBin, wantBuild string
		wantErr            string
	}{
		{name: "--bin", binFlag: full, self: partial, cwd: other, wantBin: full},
		{name: "--bin lacking some", binFlag: partial, self: full, cwd: sub, wantErr: "lacks zmesh-local, ztunnel"},
		{name: "beside zmeshctl", self: full, cwd: sub, wantBin: full},
		{name: "from a checkout", self: partial, cwd: sub, wantBuild: checkout},
		{name: "another module", self: partial, cwd: other, wantErr: "give --bin DIR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, build, err := findLocalBinaries(tc.binFlag, tc.self, tc.cwd)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || bin != tc.wantBin || build != tc.wantBuild {
				t.Fatalf("= %q, %q, %v; want %q, %q", bin, build, err, tc.wantBin, tc.wantBuild)
			}
		})
	}
}

// local status joins the session's objects with zmeshd's conditions: a
// document the API server would refuse and an object zmeshd finds a False
// condition on are Rejected with the reason; the rest Accepted, kinds
// zmesh does not act on with a note, the waypoint Gateway Programmed.
func TestLocalStatus(t *testing.T) {
	zmeshd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/statusz" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode([]statusObject{
			{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Namespace: "default", Name: "ratings", Conditions: []statusCondition{
				{Parent: "ratings", Type: "Accepted", Status: true, Reason: "Accepted", Message: "Route was valid"},
				{Parent: "ratings", Type: "ResolvedRefs", Status: false, Reason: "BackendNotFound", Message: "spec.rules[0].backendRefs[0]: ratings-v9 is not a Service"},
			}},
			{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "default", Name: "viewer", Conditions: []statusCondition{
				{Type: "WaypointAccepted", Status: true, Reason: "Accepted", Message: "enforced by the targeted waypoint"},
			}},
		})
	}))
	defer zmeshd.Close()
	session := filepath.Join(t.TempDir(), "session.json")
	body := `{"pid": ` + itoa(os.Getpid()) + `, "zmeshd": "` + strings.TrimPrefix(zmeshd.URL, "http://") + `",
  "objects": [
    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default", "name": "ratings", "file": "bad.yaml", "doc": 1},
    {"group": "security.istio.io", "kind": "AuthorizationPolicy", "namespace": "default", "name": "typo", "file": "bad.yaml", "doc": 2, "rejected": "spec: unknown field \"actoin\""},
    {"group": "security.istio.io", "kind": "AuthorizationPolicy", "namespace": "default", "name": "viewer", "file": "p.yaml", "doc": 1},
    {"kind": "ServiceAccount", "namespace": "default", "name": "curl", "file": "curl.yaml", "doc": 1, "note": "zmesh does not act on ServiceAccount"},
    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "waypoint", "file": "w.yaml", "doc": 1},
    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "bad-wp", "file": "w.yaml", "doc": 2}
  ],
  "pods": [{"namespace": "default", "name": "curl-abc-xyz", "node": "node-1", "ip": "10.50.1.10", "netns": "zm1-pod-1", "ambient": true, "owner": "Deployment/curl"}],
  "waypoints": [{"namespace": "default", "gateway": "waypoint", "node": "node-2", "ip": "10.50.2.254"},
    {"namespace": "default", "gateway": "bad-wp", "rejected": "spec.listeners[0].port: 15009, want 15008"}]}`
	if err := os.WriteFile(session, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := zmeshctl(t, "local", "status", "--session", session)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			rows[f[0]+" "+f[2]] = strings.Join(f[3:], " ")
		}
	}
	for row, want := range map[string]string{
		"HTTPRoute ratings":               "Rejected BackendNotFound ratings: ResolvedRefs=False: spec.rules[0].backendRefs[0]: ratings-v9 is not a Service",
		"AuthorizationPolicy typo":        `Rejected Invalid spec: unknown field "actoin"`,
		"AuthorizationPolicy viewer":      "Accepted Accepted enforced by the targeted waypoint",
		"ServiceAccount curl":             "Accepted - zmesh does not act on ServiceAccount",
		"Gateway waypoint":                "Accepted Programmed waypoint running on node-2 at 10.50.2.254",
		"Gateway bad-wp":                  "Rejected Invalid Accepted=False: spec.listeners[0].port: 15009, want 15008",
		"default/curl-abc-xyz 10.50.1.10": "zm1-pod-1 true Deployment/curl",
	} {
		if rows[row] != want {
			t.Errorf("row %s: %q, want %q\n%s", row, rows[row], want, out)
		}
	}

	out, _, code = zmeshctl(t, "local", "status", "--session", session, "-o", "json")
	var doc struct {
		Objects []localObjectStatus `json:"objects"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Objects) != 6 || doc.Objects[1].Status != "Rejected" {
		t.Fatalf("-o json: exit %d, %s", code, out)
	}
}

func TestLocalUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.json")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"local", "up"}, exitUsage, "want -f DIR"},
		{[]string{"local", "up", "-f", "/nonexistent-dir"}, exitFailure, "not a directory"},
		{[]string{"local", "exec", "--session", missing, "curl"}, exitUsage, "want POD -- COMMAND"},
		{[]string{"local", "status", "--session", missing}, exitFailure, "no local mesh is up"},
		{[]string{"local", "exec", "--session", missing, "deploy/curl", "--", "true"}, exitFailure, "no local mesh is up"},
	} {
		_, errOut, code := zmeshctl(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("zmeshctl %v: exit %d, %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
