package main

import (
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestBuildAndPush runs the program as `make images PUSH=…` does, for the
// waypoint image, twice: the outputs are written, the same digests come out
// of both runs, and the registry serves the image under the pushed tag with
// the digest digests.txt lists.
func TestBuildAndPush(t *testing.T) {
	ctx := t.Context()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	prefix := strings.TrimPrefix(srv.URL, "http://") + "/zmesh"

	var lists [2]string
	for i := range lists {
		out := t.TempDir()
		var stdout bytes.Buffer
		err := run(ctx, []string{"-src", "../../..", "-out", out, "-push", prefix, "-only", "waypoint"}, &stdout)
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, stdout.String())
		}
		t.Logf("run %d:\n%s", i, stdout.String())
		for _, f := range []string{"oci/index.json", "oci/oci-layout", "waypoint.tar", "bin/waypoint"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Errorf("run %d: %v", i, err)
			}
		}
		b, err := os.ReadFile(filepath.Join(out, "digests.txt"))
		if err != nil {
			t.Fatal(err)
		}
		lists[i] = string(b)
	}
	if lists[0] != lists[1] {
		t.Errorf("two runs gave different images:\n%s\n%s", lists[0], lists[1])
	}

	line := strings.TrimSpace(lists[0])
	ref, dig, ok := strings.Cut(line, "@")
	if !ok || strings.Contains(line, "\n") || !strings.HasPrefix(ref, prefix+"/waypoint:") {
		t.Fatalf("digests.txt %q: want one line %s/waypoint:<tag>@<digest>", lists[0], prefix)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(tag, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if desc.Digest.String() != dig {
		t.Errorf("registry serves %s as %s, digests.txt says %s", ref, desc.Digest, dig)
	}
}

func TestOnlyRefusesUnknownImage(t *testing.T) {
	err := run(t.Context(), []string{"-out", t.TempDir(), "-only", "waypoint,nosuch"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "unknown image name") {
		t.Errorf("run -only nosuch: %v; want an unknown image name error", err)
	}
}
