package images

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Named is a built image and the reference it is written and pushed as.
type Named struct {
	Ref   string // e.g. zmesh/ztunnel:v1.2.3
	Image v1.Image
}

// invalidTag is what a Docker tag may not contain.
var invalidTag = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// Tag turns a version into a valid image tag: characters a tag cannot hold
// (a semver build's "+") become "-", and it is cut to 128 characters.
func Tag(version string) string {
	t := invalidTag.ReplaceAllString(version, "-")
	t = strings.TrimLeft(t, ".-")
	if len(t) > 128 {
		t = t[:128]
	}
	if t == "" {
		return "latest"
	}
	return t
}

// WriteLayout writes images as one OCI image layout in dir, replacing what
// was there, each named by its reference (the
// org.opencontainers.image.ref.name annotation holds Ref).
func WriteLayout(dir string, images []Named) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clear OCI layout %s: %w", dir, err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	for _, n := range images {
		if err := p.AppendImage(n.Image, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": n.Ref,
		})); err != nil {
			return fmt.Errorf("write %s to OCI layout %s: %w", n.Ref, dir, err)
		}
	}
	return nil
}

// WriteTarball writes one image as a tarball `docker load` reads, tagged
// with its reference.
func WriteTarball(file string, n Named) error {
	tag, err := name.NewTag(n.Ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", n.Ref, err)
	}
	if err := tarball.WriteToFile(file, tag, n.Image); err != nil {
		return fmt.Errorf("write %s to %s: %w", n.Ref, file, err)
	}
	return nil
}

// Push writes one image to its registry with the credentials of the
// user's container tool configuration (docker login). insecure allows a
// registry on plain HTTP; a loopback registry is spoken to in plain HTTP in
// any case.
func Push(ctx context.Context, n Named, insecure bool) (v1.Hash, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	tag, err := name.NewTag(n.Ref, opts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image reference %q: %w", n.Ref, err)
	}
	if err := remote.Write(tag, n.Image, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", n.Ref, err)
	}
	return n.Image.Digest()
}
