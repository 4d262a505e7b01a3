package noderunner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// CNI plugins run in the node's view: its hostPath directories at their
// places (and not on the machine), one mount namespace for every plugin
// the node runs rather than one set up again for each.
func TestPluginsRunInTheNodesView(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mount namespaces)")
	}
	root := t.TempDir()
	hp := fmt.Sprintf("/run/zmesh-nodeview-test-%d", os.Getpid())
	im := &Images{HostRoot: root}
	typ := corev1.HostPathDirectoryOrCreate
	src, err := im.hostPath(&corev1.HostPathVolumeSource{Path: hp, Type: &typ})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "marker"), []byte("node-1"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A plugin asked to HOLD notes its namespace and stays until released,
	// so that the next one's cannot be a new namespace reusing its number.
	dir := t.TempDir()
	plugin := filepath.Join(dir, "plugin")
	script := `#!/bin/sh
view="$(cat ` + hp + `/marker) $(readlink /proc/self/ns/mnt)"
if [ "$CNI_COMMAND" = HOLD ]; then
  echo "$view" > ` + dir + `/held.tmp && mv ` + dir + `/held.tmp ` + dir + `/held
  while [ ! -e ` + dir + `/release ]; do sleep 0.02; done
fi
echo "$view"
`
	if err := os.WriteFile(plugin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := im.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(hp); !os.IsNotExist(err) {
			t.Errorf("the mountPath directory %s is left on the machine: %v", hp, err)
		}
	})
	e := &nodeExec{images: im}
	held := make(chan error, 1)
	go func() {
		_, err := e.ExecPlugin(context.Background(), plugin, nil, []string{"CNI_COMMAND=HOLD"})
		held <- err
	}()
	var first []byte
	for {
		if first, err = os.ReadFile(filepath.Join(dir, "held")); err == nil {
			break
		}
		select {
		case err := <-held:
			t.Fatalf("the held plugin ended: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	views := []string{strings.TrimSpace(string(first))}
	for range 2 {
		out, err := e.ExecPlugin(context.Background(), plugin, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		views = append(views, strings.TrimSpace(string(out)))
	}
	os.WriteFile(filepath.Join(dir, "release"), nil, 0o644)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i, v := range views {
		marker, view, _ := strings.Cut(v, " ")
		if marker != "node-1" {
			t.Fatalf("the plugin sees %q at %s, want the node tree's marker", marker, hp)
		}
		views[i] = view
	}
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if views[0] == own {
		t.Errorf("the plugin ran in the machine's mount namespace %s", own)
	}
	if views[1] != views[0] || views[2] != views[0] {
		t.Errorf("each plugin ran in a mount namespace of its own (%v), want the node's one", views)
	}
	if _, err := os.Stat(filepath.Join(hp, "marker")); !os.IsNotExist(err) {
		t.Errorf("the node's hostPath is mounted on the machine: %v", err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		"/run/netns/a":         "/run/netns/a",
		`/tmp/with\040space`:   "/tmp/with space",
		`/tmp/back\134slash`:   `/tmp/back\slash`,
		`/tmp/trailing\04`:     `/tmp/trailing\04`,
		`/tmp/not\0xyoctal\11`: `/tmp/not\0xyoctal\11`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
