package netenv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// RootLinks names the links of the caller's (root) network namespace, to
// compare before and after a run.
func RootLinks() []string {
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}

// BPFEntries lists every file and directory under a bpffs mount at root:
// taken once mounted and again at the end, the difference is the pins a
// run left.
func BPFEntries(root string) []string {
	var out []string
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && path != root {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// LeftBehind lists what a run working under dir left on the host: this
// package's network namespaces, root-namespace links not in linksBefore
// (not checked when nil), mounts and processes (other than this one) that
// name dir, and dir itself unless it is kept. Callers add their own
// (bpffs pins, pod apps).
func LeftBehind(dir string, linksBefore []string, keepDir bool) []string {
	var out []string
	for _, ns := range Leftovers() {
		out = append(out, "network namespace "+ns)
	}
	if linksBefore != nil {
		for _, l := range RootLinks() {
			if !slices.Contains(linksBefore, l) {
				out = append(out, "link in the root namespace: "+l)
			}
		}
	}
	if dir == "" {
		return out
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for line := range strings.SplitSeq(string(mi), "\n") {
			if strings.Contains(line, dir) {
				out = append(out, "mount: "+line)
			}
		}
	}
	self := fmt.Sprint(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name() == self {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(b), dir) {
			out = append(out, fmt.Sprintf("process %s: %s", e.Name(), strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	if !keepDir {
		if _, err := os.Stat(dir); err == nil {
			out = append(out, "temporary directory "+dir)
		}
	}
	return out
}
