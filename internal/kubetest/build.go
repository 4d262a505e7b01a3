package kubetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The pinned versions of the control plane. They are Go modules, so the
// binaries build from the module proxy with the go command alone: no
// release archive, no container image.
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.7.0"
)

// Binaries are the programs Build puts in BinDir.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"}

// CacheDir is where the binaries are kept between runs:
// $KUBE_TESTENV_DIR, else $XDG_CACHE_HOME/kube-testenv, else
// ~/.cache/kube-testenv. The layout (bin/<name>, build.lock) is the one
// machines already hold, so a warm cache is reused as it is.
func CacheDir() string {
	if d := os.Getenv("KUBE_TESTENV_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "kube-testenv")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "kube-testenv")
	}
	return filepath.Join(home, ".cache", "kube-testenv")
}

// BinDir holds the built binaries.
func BinDir() string { return filepath.Join(CacheDir(), "bin") }

// versionOK reports whether the cached binary name is there and says it
// is the pinned version.
func versionOK(ctx context.Context, name string) bool {
	path := filepath.Join(BinDir(), name)
	args, want := []string{"--version"}, "Kubernetes "+KubeVersion
	switch name {
	case "etcd":
		want = "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v")
	case "kubectl":
		args, want = []string{"version", "--client"}, "Client Version: "+KubeVersion
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).Output()
	return err == nil && bytes.Contains(out, []byte(want))
}

// Build compiles the binaries the cache lacks (cold on 2 cores: about 14
// minutes, most of it kube-apiserver) and logs progress to log. Callers
// in other processes wait on one lock, then find the binaries built.
func Build(ctx context.Context, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	if err := os.MkdirAll(BinDir(), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(CacheDir(), "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("build lock: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return fmt.Errorf("build lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	var todo []string
	for _, b := range Binaries {
		if !versionOK(ctx, b) {
			todo = append(todo, b)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	fmt.Fprintf(log, "kube-testenv: building %s into %s\n", strings.Join(todo, " "), BinDir())
	work, err := os.MkdirTemp("", "kube-testenv-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var kubeMod, etcdMod string
	for _, b := range todo {
		start := time.Now()
		var dir, pkg string
		ldflags := "-s -w"
		if b == "etcd" {
			if etcdMod == "" {
				etcdMod = filepath.Join(work, "etcd")
				if err := etcdModule(ctx, etcdMod, log); err != nil {
					return err
				}
			}
			dir, pkg = etcdMod, "go.etcd.io/etcd/server/v3"
		} else {
			if kubeMod == "" {
				kubeMod = filepath.Join(work, "kube")
				if err := kubeModule(ctx, kubeMod, log); err != nil {
					return err
				}
			}
			dir, pkg, ldflags = kubeMod, "k8s.io/kubernetes/cmd/"+b, kubeLDFlags()
		}
		tmp := filepath.Join(BinDir(), fmt.Sprintf(".%s.tmp.%d", b, os.Getpid()))
		if err := goCmd(ctx, dir, log, "build", "-trimpath", "-tags", "notest,grpcnotrace", "-ldflags", ldflags, "-o", tmp, pkg); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("build %s: %w", b, err)
		}
		if err := os.Rename(tmp, filepath.Join(BinDir(), b)); err != nil {
			return err
		}
		if !versionOK(ctx, b) {
			return fmt.Errorf("build %s: the binary does not report version %s", b, KubeVersion)
		}
		fmt.Fprintf(log, "kube-testenv: built %s in %s\n", b, time.Since(start).Round(time.Second))
	}
	return nil
}

// flock takes an exclusive lock on f, giving up when ctx ends.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EWOULDBLOCK {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// kubeLDFlags stamp the version the binaries report (and the API server
// serves at /version), as Kubernetes' own build does.
func kubeLDFlags() string {
	v := strings.TrimPrefix(KubeVersion, "v")
	major, rest, _ := strings.Cut(v, ".")
	minor, _, _ := strings.Cut(rest, ".")
	date := time.Now().UTC().Format(time.RFC3339)
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", pkg+".gitVersion="+KubeVersion, "-X", pkg+".gitMajor="+major, "-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean", "-X", pkg+".buildDate="+date)
	}
	return strings.Join(flags, " ")
}

// goCmd runs the go command in a throwaway module, output to log.
func goCmd(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 40))
	}
	log.Write(out.Bytes())
	return nil
}

// etcdModule makes a module that requires etcd's server at the pinned
// version; its main package is the etcd binary.
func etcdModule(ctx context.Context, dir string, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := goCmd(ctx, dir, log, "mod", "init", "kubetest-etcd"); err != nil {
		return err
	}
	return goCmd(ctx, dir, log, "mod", "edit", "-require=go.etcd.io/etcd/server/v3@"+EtcdVersion)
}

// stagingReplace matches the lines of k8s.io/kubernetes's go.mod that
// point its staging modules (k8s.io/api, client-go, ...) at its own tree.
var stagingReplace = regexp.MustCompile(`(?m)^\s*k8s\.io/([A-Za-z0-9._-]+)\s*=>\s*\./staging/src/k8s\.io/[A-Za-z0-9._-]+\s*$`)

// kubeModule makes a module that requires k8s.io/kubernetes. That module
// replaces its staging modules with directories of its own repository,
// which a dependent module cannot see; each is published on its own at
// v0.<minor>.<patch>, so the build module replaces them with those.
func kubeModule(ctx context.Context, dir string, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := goCmd(ctx, dir, log, "mod", "init", "kubetest-kube"); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "k8s.io/kubernetes@"+KubeVersion)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("download k8s.io/kubernetes@%s: %w\n%s", KubeVersion, err, out)
	}
	var info struct{ GoMod string }
	if err := json.Unmarshal(out, &info); err != nil || info.GoMod == "" {
		return fmt.Errorf("download k8s.io/kubernetes@%s: no go.mod in %q", KubeVersion, out)
	}
	gomod, err := os.ReadFile(info.GoMod)
	if err != nil {
		return err
	}
	staging := "v0." + strings.TrimPrefix(KubeVersion, "v1.")
	// Two staging modules are examples that are not published.
	skip := []string{"sample-cli-plugin", "sample-controller"}
	edits := []string{"mod", "edit", "-require=k8s.io/kubernetes@" + KubeVersion}
	for _, m := range stagingReplace.FindAllStringSubmatch(string(gomod), -1) {
		if slices.Contains(skip, m[1]) {
			continue
		}
		edits = append(edits, fmt.Sprintf("-replace=k8s.io/%s=k8s.io/%s@%s", m[1], m[1], staging))
	}
	if len(edits) == 3 {
		return fmt.Errorf("k8s.io/kubernetes@%s go.mod has no staging replacements", KubeVersion)
	}
	return goCmd(ctx, dir, log, edits...)
}
