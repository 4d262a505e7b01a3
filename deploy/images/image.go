package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The OCI annotation keys the images carry as labels.
const (
	LabelSource   = "org.opencontainers.image.source"
	LabelVersion  = "org.opencontainers.image.version"
	LabelRevision = "org.opencontainers.image.revision"
	LabelCreated  = "org.opencontainers.image.created"
	LabelTitle    = "org.opencontainers.image.title"
)

// Stamp is what an image says about the source it was built from.
type Stamp struct {
	Source   string    // URL of the source repository
	Version  string    // e.g. git describe's output
	Revision string    // the commit
	Time     time.Time // the commit's time: every timestamp in the image
}

// Inputs are the files an image is built from, on the build machine.
type Inputs struct {
	// Binaries maps each of the Spec's binaries to its file.
	Binaries map[string]string
	// CABundle is the PEM file of public roots, for a Spec that wants one.
	CABundle string
}

// Build assembles spec's image for linux/amd64 from in. The result depends
// only on spec, the inputs' contents and st: file times, owners and the
// image's dates are fixed, so building it twice gives the same digest.
func Build(spec Spec, in Inputs, st Stamp) (v1.Image, error) {
	if spec.Name == "" || len(spec.Binaries) == 0 {
		return nil, fmt.Errorf("image spec %q: a name and at least one binary are required", spec.Name)
	}
	var files []file
	for _, b := range spec.Binaries {
		src, ok := in.Binaries[b]
		if !ok {
			return nil, fmt.Errorf("image %s: no file given for binary %s", spec.Name, b)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("image %s: read binary %s: %w", spec.Name, b, err)
		}
		files = append(files, file{path: path.Join(BinDir, b), mode: 0o755, data: data})
	}
	if spec.CABundle {
		if in.CABundle == "" {
			return nil, fmt.Errorf("image %s: needs a CA bundle and none was given", spec.Name)
		}
		data, err := os.ReadFile(in.CABundle)
		if err != nil {
			return nil, fmt.Errorf("image %s: read CA bundle: %w", spec.Name, err)
		}
		files = append(files, file{path: CABundle, mode: 0o644, data: data})
	}
	created := st.Time.UTC().Truncate(time.Second)
	layerTar, err := tarFiles(files, created)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", spec.Name, err)
	}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "zmesh images: " + strings.Join(spec.Binaries, ", ")},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", spec.Name, err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		Entrypoint: spec.Entrypoint(),
		User:       spec.User,
		Env:        []string{"PATH=" + Path},
		WorkingDir: "/",
		Labels: map[string]string{
			LabelTitle:    spec.Name,
			LabelSource:   st.Source,
			LabelVersion:  st.Version,
			LabelRevision: st.Revision,
			LabelCreated:  created.Format(time.RFC3339),
		},
	}
	return mutate.ConfigFile(img, cf)
}

type file struct {
	path string // absolute, in the image
	mode int64
	data []byte
}

// tarFiles writes files, and the directories above them, as a layer: owned
// by root (a non-root user can run the binaries but not replace them), all
// with the time mtime, in a fixed order.
func tarFiles(files []file, mtime time.Time) ([]byte, error) {
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	var entries []entry
	for d := range dirs {
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755}})
	}
	for _, f := range files {
		entries = append(entries, entry{
			hdr:  tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, Size: int64(len(f.data))},
			data: f.data,
		})
	}
	// A parent sorts before its children ("usr/" < "usr/local/").
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		e.hdr.ModTime = mtime
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", e.hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", e.hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}
