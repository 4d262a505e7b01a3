package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

const primary = `{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

func build(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// chain returns the plugin types of the conflist in order.
func chain(t *testing.T, path string) ([]string, map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil
	}
	var doc struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, nil // caught mid-write is impossible (rename), but be lenient
	}
	var types []string
	var ours map[string]any
	for _, p := range doc.Plugins {
		types = append(types, fmt.Sprint(p["type"]))
		if p["type"] == "zmesh-cni" {
			ours = p
		}
	}
	return types, ours
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestBinary runs zmesh-cni-agent against a real API server: it installs
// the plugin, chains it last into the primary conflist, chains it again
// when the primary CNI rewrites its file, reports ready, and exits cleanly
// on SIGTERM leaving the entry in place (fail closed); --uninstall removes
// it.
func TestBinary(t *testing.T) {
	env := kubetest.ForTest(t)
	dir := t.TempDir()
	bins := filepath.Join(dir, "build")
	os.Mkdir(bins, 0o755)
	agentBin := build(t, bins, "github.com/zmesh/zmesh/cmd/zmesh-cni-agent")
	pluginBin := build(t, bins, "github.com/zmesh/zmesh/cmd/zmesh-cni")
	binDir, confDir, bpfRoot := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d"), filepath.Join(dir, "bpf")
	for _, d := range []string{binDir, confDir, bpfRoot} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("bpf", bpfRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpfRoot, unix.MNT_DETACH) })
	conf := filepath.Join(confDir, "10-podnet.conflist")
	if err := os.WriteFile(conf, []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	health := freeAddr(t)
	cniSock := filepath.Join(dir, "cni.sock")
	args := []string{
		"--node", "node-a", "--kubeconfig", env.Kubeconfig,
		"--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--plugin-binary", pluginBin,
		"--cni-socket", cniSock, "--zds-socket", filepath.Join(dir, "zds.sock"),
		"--bpf-root", bpfRoot, "--health-address", health, "--chain-interval", "200ms",
	}
	cmd := exec.Command(agentBin, args...)
	logs := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})

	waitFor(t, "the agent to be ready", func() bool {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	resp, err := http.Get("http://" + health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "zmesh_cni_zds_pods_refused 0") {
		t.Fatalf("/metrics lacks zmesh_cni_zds_pods_refused:\n%s", body)
	}
	st, err := os.Stat(filepath.Join(binDir, "zmesh-cni"))
	if err != nil || st.Mode().Perm()&0o100 == 0 {
		t.Fatalf("plugin not installed executable: %v", err)
	}
	waitFor(t, "zmesh-cni chained last", func() bool {
		types, ours := chain(t, conf)
		return len(types) == 3 && types[2] == "zmesh-cni" && ours["agent_socket"] == cniSock
	})

	// The primary CNI rewrites its file, dropping us.
	if err := os.WriteFile(conf+".tmp", []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(conf+".tmp", conf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "zmesh-cni chained again", func() bool {
		types, _ := chain(t, conf)
		return len(types) == 3 && types[2] == "zmesh-cni"
	})
	t.Logf("re-chained %v after the rewrite", time.Since(start).Round(time.Millisecond))

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10s after SIGTERM")
	}
	if types, _ := chain(t, conf); len(types) != 3 {
		t.Fatalf("after SIGTERM the chain is %v, want our entry kept (fail closed)", types)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, agentBin, "--uninstall", "--cni-bin-dir", binDir, "--cni-conf-dir", confDir).CombinedOutput()
	if err != nil {
		t.Fatalf("--uninstall: %v\n%s", err, out)
	}
	if types, _ := chain(t, conf); len(types) != 2 {
		t.Fatalf("after --uninstall the chain is %v", types)
	}
	if _, err := os.Stat(filepath.Join(binDir, "zmesh-cni")); !os.IsNotExist(err) {
		t.Fatalf("plugin binary left after --uninstall: %v", err)
	}
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--node", "n"}, true},
		{[]string{}, false},
		{[]string{"--node", "n", "--kubeconfig", "k", "--xds-address", "a:1"}, false},
		{[]string{"--node", "n", "--bpf-root", "rel"}, false},
		{[]string{"--uninstall"}, true},
		{[]string{"--node", "n", "extra"}, false},
		{[]string{"--node", "n", "--zds-peer-uid", "1337"}, true},
		{[]string{"--node", "n", "--zds-peer-uid", "-2"}, false},
	} {
		t.Setenv("NODE_NAME", "")
		_, err := parseFlags(tc.args)
		if (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q) = %v, want ok=%v", tc.args, err, tc.ok)
		}
	}
}
