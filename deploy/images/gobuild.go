package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// GoBuildArgs are the flags every image binary is built with: static (no
// cgo: the images have no libc), paths of the build machine left out
// (-trimpath) so the binary depends only on the source, and the VCS stamp
// internal/version reads (-buildvcs=auto overrides a GOFLAGS that turns it
// off; it stamps when the source is a git checkout).
var GoBuildArgs = []string{"build", "-trimpath", "-buildvcs=auto"}

// GoBuild builds the main packages pkgs of the module in dir for
// linux/amd64 into outDir, each binary named after its package's last
// element, and returns their paths by that name.
func GoBuild(ctx context.Context, dir, outDir string, pkgs ...string) (map[string]string, error) {
	// go build runs in dir: a relative outDir is the caller's.
	outDir, err := filepath.Abs(outDir)
	if err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", outDir, err)
	}
	args := append(append([]string{}, GoBuildArgs...), "-o", outDir+"/")
	args = append(args, pkgs...)
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	bins := map[string]string{}
	for _, p := range pkgs {
		b := path.Base(p)
		bins[b] = filepath.Join(outDir, b)
	}
	return bins, nil
}
