package chart

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// prevZtunnelCommit is the release the upgrade scenario's ztunnels start
// from, one version behind the zmeshd it upgrades to: main just before
// HBONE was bounded against HTTP/2 abuse, before ZDS acks named their pod
// (so the cni agent must serve this ztunnel one request at a time, as it
// serves Istio's), before the xDS server held a subscription for its
// type's first Set, and before the HBONE hot-path changes that followed.
// It is the first commit on main whose ztunnel takes every flag the chart
// passes (--state-dir, --cluster-id and --mesh-cidrs came with it), so
// the chart's DaemonSet runs it unchanged.
const prevZtunnelCommit = "13e15581304a2b5cafe9623e556303f617185952"

// prevTag is the ztunnel image tag that runs the prevZtunnelCommit build:
// the node runner runs Bin/<tag>/ztunnel for it.
const prevTag = "prev"

// prevZtunnel builds ztunnel at prevZtunnelCommit (cached under the
// user's cache directory by commit, so reruns only copy it), puts it where
// the node runner runs it for the image zmesh/ztunnel:prev, and returns
// that path. The repository's history must hold the commit: a shallow
// clone fails the test, it does not skip it.
func prevZtunnel(t *testing.T) string {
	t.Helper()
	if out, err := exec.Command("git", "-C", mesh.Root, "cat-file", "-e", prevZtunnelCommit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("the previous release's ztunnel is built from commit %s, which this clone lacks (shallow? fetch main's full history): %v %s",
			prevZtunnelCommit, err, out)
	}
	cacheRoot, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(cacheRoot, "zmesh-e2e", "ztunnel-"+prevZtunnelCommit, "ztunnel")
	if _, err := os.Stat(cached); err != nil {
		start := time.Now()
		if err := buildAt(t, prevZtunnelCommit, cached); err != nil {
			t.Fatalf("build ztunnel at %s: %v", prevZtunnelCommit, err)
		}
		t.Logf("built ztunnel at %s in %s", prevZtunnelCommit[:12], time.Since(start).Round(100*time.Millisecond))
	}
	bin := filepath.Join(mesh.Bin, prevTag, "ztunnel")
	if err := copyFile(cached, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// buildAt builds ./cmd/ztunnel of the tree at commit into out, through a
// temporary name so a failed build leaves no cache entry.
func buildAt(t *testing.T, commit, out string) error {
	src := t.TempDir()
	archive := exec.Command("git", "-C", mesh.Root, "archive", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	var stderr strings.Builder
	archive.Stderr, untar.Stderr = &stderr, &stderr
	if err := untar.Start(); err != nil {
		return err
	}
	if err := archive.Run(); err != nil {
		return fmt.Errorf("git archive: %w: %s", err, stderr.String())
	}
	if err := untar.Wait(); err != nil {
		return fmt.Errorf("tar: %w: %s", err, stderr.String())
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".building"
	build := exec.Command("go", "build", "-o", tmp, "./cmd/ztunnel")
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	return os.Rename(tmp, out)
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// runningExe counts the processes whose executable is bin.
func runningExe(bin string) int {
	n := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == bin {
			n++
		}
	}
	return n
}
