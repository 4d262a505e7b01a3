package noderunner

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A volume's mountPath that does not exist on the machine (/var/run/
// secrets/tokens, say) must be created there for the pod's mount
// namespace to mount over: it is one file system for every node runner,
// and for every test process on the machine, since `go test` runs
// packages at once. Removing such a directory while another mount
// namespace has a mount on it makes the kernel detach that mount, and the
// pod loses its volume (a ztunnel its token) mid-run. So the directories
// are marked as the node runners' (an extended attribute), any test
// process that uses one records it, and each removes at its Close only
// those no mount namespace on the machine still mounts on or under: the
// last user removes them.

// madeMark marks a directory or file created for a mountPath.
const madeMark = "trusted.zmesh-e2e-mountpath"

// made are the mountPath entries this process's node runners created or
// use (marked), to remove in Close.
var made struct {
	sync.Mutex
	paths []string
}

// remember creates what is missing of mountPath (a directory, or an empty
// file when the volume's source is a file), marks what it created, and
// records it and the marked entries above it.
func (im *Images) remember(src, mountPath string) {
	leafIsDir := true
	if fi, err := os.Stat(src); err == nil && !fi.IsDir() {
		leafIsDir = false
	}
	var chain []string // deepest first
	for p := filepath.Clean(mountPath); p != "/"; p = filepath.Dir(p) {
		chain = append(chain, p)
	}
	made.Lock()
	defer made.Unlock()
	for i, p := range slices.Backward(chain) {
		if _, err := os.Lstat(p); err == nil {
			if marked(p) && !slices.Contains(made.paths, p) {
				made.paths = append(made.paths, p)
			}
			continue
		}
		var err error
		if i == 0 && !leafIsDir {
			err = os.WriteFile(p, nil, 0o644)
		} else {
			err = os.Mkdir(p, 0o755)
		}
		if err != nil && !errors.Is(err, os.ErrExist) {
			return // the pod's mount reports it
		}
		unix.Setxattr(p, madeMark, []byte("1"), 0)
		if !slices.Contains(made.paths, p) {
			made.paths = append(made.paths, p)
		}
	}
}

func marked(p string) bool {
	_, err := unix.Getxattr(p, madeMark, nil)
	return err == nil
}

// Close removes the mountPath entries this process's node runners created
// or used, except those a mount namespace on the machine still mounts on
// or under (another test process's pods); every pod of this process must
// have stopped.
func (im *Images) Close() error {
	im.view.close()
	made.Lock()
	defer made.Unlock()
	// Deepest first.
	slices.SortFunc(made.paths, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	mounts, err := machineMountPoints()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range made.paths {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue // gone
		}
		if slices.ContainsFunc(mounts, func(m string) bool { return m == real || strings.HasPrefix(m, real+"/") }) {
			continue
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	made.paths = nil
	return errors.Join(errs...)
}

// machineMountPoints lists the mount points of every mount namespace on
// the machine (one process of each), as paths from the machine's root.
func machineMountPoints() ([]string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	seen := map[uint64]bool{}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "mnt"), &st) != nil || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		f, err := os.Open(filepath.Join("/proc", e.Name(), "mountinfo"))
		if err != nil {
			continue // exited
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			// id parent major:minor root mountpoint ...
			if f := strings.Fields(sc.Text()); len(f) > 4 {
				out = append(out, unescapeMountinfo(f[4]))
			}
		}
		f.Close()
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no mount point found in /proc/*/mountinfo")
	}
	return out, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
