package plugin

import (
	"os"
	"path/filepath"
	"strings"
)

// cleanupBuilt removes plugin binaries the chain tests built.
func cleanupBuilt() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "zmesh-cni-bin-*"))
	for _, d := range dirs {
		if strings.HasPrefix(filepath.Base(d), "zmesh-cni-bin-") {
			os.RemoveAll(d)
		}
	}
}
