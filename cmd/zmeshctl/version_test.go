package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	stdout, _, code := zmeshctl(t, "version")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "zmeshctl: ") || lines[1] != "zmeshd: (not queried)" {
		t.Errorf("exit %d:\n%s", code, stdout)
	}

	// zmeshd without a version endpoint says so, and it is not a failure.
	bare := httptest.NewServer(http.NotFoundHandler())
	defer bare.Close()
	stdout, stderr, code := zmeshctl(t, "version", "--zmeshd", bare.URL)
	want := "zmeshd: unknown: zmeshd at " + bare.URL + " does not report its version (GET /version: 404 Not Found)"
	if code != 0 || !strings.Contains(stdout, want) {
		t.Errorf("exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
	}

	// One that answers.
	versioned := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(versionInfo{Version: "v0.3.0", Revision: "abc123"})
	}))
	defer versioned.Close()
	stdout, _, code = zmeshctl(t, "version", "--zmeshd", versioned.URL, "-o", "json")
	var v versions
	if err := json.Unmarshal([]byte(stdout), &v); code != 0 || err != nil || v.Server == nil || v.Server.Version != "v0.3.0" || v.Client.Version == "" {
		t.Errorf("exit %d, %v:\n%s", code, err, stdout)
	}

	// Something else answering /version is not taken for a version.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("[]\n")) }))
	defer other.Close()
	_, stderr, code = zmeshctl(t, "version", "--zmeshd", other.URL)
	if code != exitFailure || !strings.Contains(stderr, "not a version") {
		t.Errorf("exit %d, stderr %q; want exit 1 and 'not a version'", code, stderr)
	}

	// Asked and unreachable: the client's version, then the error.
	addr := closedAddr(t)
	stdout, stderr, code = zmeshctl(t, "version", "--zmeshd", addr)
	if code != exitFailure || !strings.HasPrefix(stdout, "zmeshctl: ") || !strings.HasPrefix(stderr, "error: cannot reach zmeshd at "+addr+": connection refused") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
