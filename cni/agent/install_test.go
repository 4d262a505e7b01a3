package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

const primaryConflist = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`

func newInstaller(t *testing.T) *Installer {
	t.Helper()
	return &Installer{
		BinDir:     t.TempDir(),
		ConfDir:    t.TempDir(),
		PluginConf: map[string]any{"agent_socket": "/var/run/zmesh/cni.sock"},
	}
}

func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("%s no longer parses as a conflist: %v", path, err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	return types
}

func TestChainAppendsOnceAndKeepsTheRest(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-primary.conflist")
	os.WriteFile(path, []byte(primaryConflist), 0o600)
	// A later file is not the primary and is left alone.
	other := filepath.Join(i.ConfDir, "99-other.conflist")
	os.WriteFile(other, []byte(primaryConflist), 0o644)

	changed, err := i.Chain()
	if err != nil || !changed {
		t.Fatalf("first chain: changed=%v err=%v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, path), ","); got != "bridge,portmap,zmesh-cni" {
		t.Fatalf("chain = %s", got)
	}
	changed, err = i.Chain()
	if err != nil || changed {
		t.Fatalf("second chain rewrote the file: changed=%v err=%v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, other), ","); got != "bridge,portmap" {
		t.Errorf("non-primary file changed: %s", got)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want the original 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	var doc map[string]any
	json.Unmarshal(b, &doc)
	if doc["name"] != "k8s-pod-network" {
		t.Errorf("network name lost: %v", doc["name"])
	}

	if err := i.Unchain(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pluginTypes(t, path), ","); got != "bridge,portmap" {
		t.Fatalf("after unchain: %s", got)
	}
}

func TestChainConvertsConf(t *testing.T) {
	i := newInstaller(t)
	os.WriteFile(filepath.Join(i.ConfDir, "10-bridge.conf"), []byte(`{"cniVersion":"0.4.0","name":"net","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`), 0o644)
	if _, err := i.Chain(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pluginTypes(t, filepath.Join(i.ConfDir, "10-bridge.conflist")), ","); got != "bridge,zmesh-cni" {
		t.Fatalf("converted chain = %s", got)
	}
	if _, err := os.Stat(filepath.Join(i.ConfDir, "10-bridge.conf")); !os.IsNotExist(err) {
		t.Error("the .conf was left beside its conflist")
	}
}

func TestChainErrors(t *testing.T) {
	i := newInstaller(t)
	if _, err := i.Chain(); err == nil || !strings.Contains(err.Error(), "no CNI configuration") {
		t.Fatalf("empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(i.ConfDir, "10-broken.conflist"), []byte(`{"plugins": 3}`), 0o644)
	if _, err := i.Chain(); err == nil || !strings.Contains(err.Error(), "10-broken.conflist: plugins is not a list") {
		t.Fatalf("broken file: %v", err)
	}
}

// The primary CNI rewrites its file without us; Run puts us back.
func TestRunReChainsAfterRewrite(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-primary.conflist")
	os.WriteFile(path, []byte(primaryConflist), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- i.Run(ctx, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	waitTypes := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			list, err := libcni.ConfListFromFile(path)
			if err == nil {
				var types []string
				for _, p := range list.Plugins {
					types = append(types, p.Network.Type)
				}
				if strings.Join(types, ",") == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("chain never became %s", want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitTypes("bridge,portmap,zmesh-cni")
	os.WriteFile(path, []byte(primaryConflist), 0o644) // the primary CNI's rewrite
	waitTypes("bridge,portmap,zmesh-cni")
}

func TestInstallBinary(t *testing.T) {
	i := newInstaller(t)
	i.PluginBinary = filepath.Join(t.TempDir(), "zmesh-cni")
	os.WriteFile(i.PluginBinary, []byte("#!/bin/sh\n"), 0o600)
	if err := i.InstallBinary(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(i.BinDir, "zmesh-cni"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v %v", st, err)
	}
	ents, _ := os.ReadDir(i.BinDir)
	if len(ents) != 1 {
		t.Errorf("bin dir holds %d entries, want only the plugin", len(ents))
	}
}
