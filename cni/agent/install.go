package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// PluginType is zmesh-cni's "type" in a conflist.
const PluginType = "zmesh-cni"

// Installer puts zmesh-cni on the node: the binary into the CNI bin dir and
// an entry at the end of the primary network's plugin chain. The primary
// CNI owns its file and may rewrite it at any time; Run puts the entry back.
type Installer struct {
	BinDir       string         // host CNI bin dir, e.g. /opt/cni/bin
	ConfDir      string         // host CNI conf dir, e.g. /etc/cni/net.d
	PluginBinary string         // the zmesh-cni binary to install
	PluginConf   map[string]any // our chain entry; "type" is set to zmesh-cni
	Log          *slog.Logger
}

// InstallBinary copies the plugin into the bin dir atomically, so a runtime
// never executes a half-written file.
func (i *Installer) InstallBinary() error {
	src, err := os.Open(i.PluginBinary)
	if err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	defer src.Close()
	dst := filepath.Join(i.BinDir, PluginType)
	tmp, err := os.CreateTemp(i.BinDir, "."+PluginType+"-*")
	if err != nil {
		return fmt.Errorf("install plugin into %s: %w", i.BinDir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// primary returns the network configuration the runtime uses: the first
// file in lexical order, as kubelet and the CRI runtimes pick it.
func (i *Installer) primary() (string, error) {
	files, err := libcni.ConfFiles(i.ConfDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return "", fmt.Errorf("list CNI configs in %s: %w", i.ConfDir, err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return "", fmt.Errorf("no CNI configuration in %s: the primary CNI has not written one yet", i.ConfDir)
	}
	return files[0], nil
}

// readList reads a CNI config file as a conflist (a single-plugin .conf
// becomes a one-element chain), keeping every field it does not know.
func readList(path string) (map[string]any, []any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, nil, fmt.Errorf("%s: not JSON: %w", path, err)
	}
	if raw, ok := doc["plugins"]; ok {
		plugins, ok := raw.([]any)
		if !ok {
			return nil, nil, fmt.Errorf("%s: plugins is not a list", path)
		}
		return doc, plugins, nil
	}
	// A .conf: one plugin whose network-level keys move to the list.
	list := map[string]any{}
	for _, k := range []string{"cniVersion", "name", "disableCheck"} {
		if v, ok := doc[k]; ok {
			list[k] = v
		}
	}
	if _, ok := doc["type"]; !ok {
		return nil, nil, fmt.Errorf("%s: neither plugins nor type", path)
	}
	return list, []any{doc}, nil
}

func isOurs(p any) bool {
	m, ok := p.(map[string]any)
	return ok && m["type"] == PluginType
}

// Chain makes sure the primary conflist ends with our entry. It reports
// whether it wrote anything.
func (i *Installer) Chain() (bool, error) {
	path, err := i.primary()
	if err != nil {
		return false, err
	}
	doc, plugins, err := readList(path)
	if err != nil {
		return false, err
	}
	want := map[string]any{}
	for k, v := range i.PluginConf {
		want[k] = v
	}
	want["type"] = PluginType
	// Ours belongs last: it needs the previous plugins' result (the IPs).
	var others []any
	for _, p := range plugins {
		if !isOurs(p) {
			others = append(others, p)
		}
	}
	n := len(plugins)
	if n > 0 && len(others) == n-1 && isOurs(plugins[n-1]) && sameJSON(plugins[n-1], want) {
		return false, nil
	}
	doc["plugins"] = append(others, want)
	target := path
	if !strings.HasSuffix(path, ".conflist") {
		target = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	}
	if err := writeJSONAtomic(target, doc); err != nil {
		return false, err
	}
	if target != path {
		os.Remove(path)
	}
	return true, nil
}

// Unchain removes our entry from every config in the conf dir.
func (i *Installer) Unchain() error {
	files, err := libcni.ConfFiles(i.ConfDir, []string{".conflist"})
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		doc, plugins, err := readList(f)
		if err != nil {
			continue // not ours to judge
		}
		var keep []any
		for _, p := range plugins {
			if !isOurs(p) {
				keep = append(keep, p)
			}
		}
		if len(keep) != len(plugins) {
			doc["plugins"] = keep
			errs = append(errs, writeJSONAtomic(f, doc))
		}
	}
	return errors.Join(errs...)
}

// Run re-chains every interval until ctx ends: the primary CNI rewriting
// its file (on upgrade, on restart) must not silently drop capture.
func (i *Installer) Run(ctx context.Context, interval time.Duration) error {
	log := i.Log
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if changed, err := i.Chain(); err != nil {
			log.Warn("cni chaining failed", "reason", err.Error())
		} else if changed {
			log.Info("zmesh-cni chained into the primary CNI configuration", "dir", i.ConfDir)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func sameJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	var x, y any
	json.Unmarshal(ja, &x)
	json.Unmarshal(jb, &y)
	return reflect.DeepEqual(x, y)
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".zmesh-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
