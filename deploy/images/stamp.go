package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// StampFromGit reads the stamp of the source checked out in dir: the
// version is `git describe --tags --always --dirty` (a "-dirty" suffix
// when the tree has changes, so such an image is never taken for the
// commit's), the revision the commit, and the time the commit's, unless
// SOURCE_DATE_EPOCH (the reproducible-builds convention) sets it.
func StampFromGit(ctx context.Context, dir, source string) (Stamp, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = strings.TrimSpace(string(ee.Stderr))
			}
			return "", fmt.Errorf("git %s: %w %s", strings.Join(args, " "), err, stderr)
		}
		return strings.TrimSpace(string(out)), nil
	}
	st := Stamp{Source: source}
	var err error
	if st.Version, err = git("describe", "--tags", "--always", "--dirty"); err != nil {
		return Stamp{}, err
	}
	if st.Revision, err = git("rev-parse", "HEAD"); err != nil {
		return Stamp{}, err
	}
	ct, err := git("log", "-1", "--format=%ct")
	if err != nil {
		return Stamp{}, err
	}
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		ct = e
	}
	secs, err := strconv.ParseInt(ct, 10, 64)
	if err != nil {
		return Stamp{}, fmt.Errorf("commit time %q: %w", ct, err)
	}
	st.Time = time.Unix(secs, 0).UTC()
	return st, nil
}
