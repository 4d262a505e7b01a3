package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// moduleRoot is the repository's root, from this package's directory.
const moduleRoot = "../.."

var testStamp = Stamp{
	Source:   "https://example.test/zmesh",
	Version:  "v0.0.0-test+dirty",
	Revision: "0123456789abcdef0123456789abcdef01234567",
	Time:     time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

// TestSpecs checks the image list against the binaries and what each needs.
func TestSpecs(t *testing.T) {
	specs := Specs()
	var carried []string
	for _, s := range specs {
		carried = append(carried, s.Binaries...)
		if got, want := s.Entrypoint(), []string{BinDir + "/" + s.Binaries[0]}; !slices.Equal(got, want) {
			t.Errorf("%s: entrypoint %q, want %q", s.Name, got, want)
		}
		wantUser := NonRoot
		if s.Name == "ztunnel" || s.Name == "zmesh-cni-agent" {
			wantUser = Root
		}
		if s.User != wantUser {
			t.Errorf("%s: user %q, want %q", s.Name, s.User, wantUser)
		}
	}
	// Every binary of cmd/ is in an image.
	dirs, err := os.ReadDir(filepath.Join(moduleRoot, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if d.IsDir() && !slices.Contains(carried, d.Name()) {
			t.Errorf("cmd/%s is in no image", d.Name())
		}
	}
	// The agent installs the plugin from next to its own executable.
	for _, s := range specs {
		if s.Name == "zmesh-cni-agent" && !slices.Contains(s.Binaries, "zmesh-cni") {
			t.Errorf("zmesh-cni-agent's image lacks zmesh-cni beside %s", s.Entrypoint()[0])
		}
	}
}

func TestTag(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                        "v1.2.3",
		"v0.0.0-20261205-c4da4eb+dirty": "v0.0.0-20261205-c4da4eb-dirty",
		"c4da4eb-dirty":                 "c4da4eb-dirty",
		"":                              "latest",
		".hidden":                       "hidden",
		strings.Repeat("a", 200):        strings.Repeat("a", 128),
		"feature/branch":                "feature-branch",
	} {
		if got := Tag(in); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestImageThroughRegistry builds a small program's image, checks that a
// second build gives the same digest, pushes it to a registry, pulls it
// back and checks what a container runtime would run.
func TestImageThroughRegistry(t *testing.T) {
	ctx := t.Context()
	bins := goBuild(t, ctx, "./deploy/images/testdata/tiny")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "tiny", Binaries: []string{"tiny"}, User: NonRoot, CABundle: true}
	in := Inputs{Binaries: bins, CABundle: ca}
	img := build(t, spec, in, testStamp)

	// Reproducible: a second build, from a second compilation, is the same
	// image; a different commit time is not.
	again := build(t, spec, Inputs{Binaries: goBuild(t, ctx, "./deploy/images/testdata/tiny"), CABundle: ca}, testStamp)
	want := digest(t, img)
	if got := digest(t, again); got != want {
		t.Errorf("second build digest %s, first %s", got, want)
	}
	later := testStamp
	later.Time = later.Time.Add(time.Second)
	if digest(t, build(t, spec, in, later)) == want {
		t.Error("a different commit time gave the same digest: the stamp is not in the image")
	}

	pulled := pushAndPull(t, ctx, "zmesh/tiny:"+Tag(testStamp.Version), img)
	if got := digest(t, pulled); got != want {
		t.Fatalf("pulled digest %s, pushed %s", got, want)
	}
	checkConfig(t, pulled, spec, testStamp)
	files := layerFiles(t, pulled)
	checkBinary(t, files, "/usr/local/bin/tiny", bins["tiny"])
	ce, ok := files[CABundle]
	if !ok || !bytes.Equal(ce.data, mustRead(t, ca)) || ce.hdr.Mode != 0o644 {
		t.Errorf("CA bundle in the layer: %v, mode %o; want the given file, mode 644", ok, ce.hdr.Mode)
	}
	if got := resolve(t, pulled, files, "tiny"); got != "/usr/local/bin/tiny" {
		t.Errorf("command \"tiny\" resolves to %q on the image's PATH", got)
	}
	for p, e := range files {
		if !e.hdr.ModTime.Equal(testStamp.Time) {
			t.Errorf("%s: mtime %v, want the commit time %v", p, e.hdr.ModTime, testStamp.Time)
		}
	}

	// The binary taken from the pulled layer runs with nothing around it
	// (static, no interpreter) and reports its build info.
	exe := filepath.Join(t.TempDir(), "tiny")
	if err := os.WriteFile(exe, files["/usr/local/bin/tiny"].data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "go1.") {
		t.Errorf("binary from the image: %v, output %q; want its version line", err, out)
	}

	// The layout and the docker tarball hold the same image under its name.
	ref := "zmesh/tiny:" + Tag(testStamp.Version)
	dir := t.TempDir()
	if err := WriteLayout(filepath.Join(dir, "oci"), []Named{{Ref: ref, Image: img}}); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		t.Errorf("OCI layout index %+v; want one manifest %s named %s", im.Manifests, want, ref)
	}
	tarFile := filepath.Join(dir, "tiny.tar")
	if err := WriteTarball(tarFile, Named{Ref: ref, Image: img}); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tarball.ImageFromPath(tarFile, &tag)
	if err != nil {
		t.Fatalf("read the docker tarball by its tag: %v", err)
	}
	// A docker tarball carries config and layers, not the manifest: the
	// same config and layers are the same image.
	if lc, ic := configDigest(t, loaded), configDigest(t, img); lc != ic {
		t.Errorf("docker tarball config %s, image's %s", lc, ic)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(tarFile) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{ref}) {
		t.Errorf("docker tarball manifest.json %+v; want RepoTags [%s]", m, ref)
	}
}

// TestWaypointImage builds the real waypoint image: the waypoint controller
// runs its Deployments with the command "waypoint", which must resolve.
func TestWaypointImage(t *testing.T) {
	ctx := t.Context()
	var spec Spec
	for _, s := range Specs() {
		if s.Name == "waypoint" {
			spec = s
		}
	}
	bins := goBuild(t, ctx, "./cmd/waypoint")
	img := build(t, spec, Inputs{Binaries: bins}, testStamp)
	pulled := pushAndPull(t, ctx, "zmesh/waypoint:test", img)
	checkConfig(t, pulled, spec, testStamp)
	files := layerFiles(t, pulled)
	checkBinary(t, files, "/usr/local/bin/waypoint", bins["waypoint"])
	if got := resolve(t, pulled, files, "waypoint"); got != "/usr/local/bin/waypoint" {
		t.Errorf("command \"waypoint\" resolves to %q on the image's PATH", got)
	}
	if _, ok := files[CABundle]; ok {
		t.Error("the waypoint image carries a CA bundle it does not use")
	}
	bi, err := buildinfo.ReadFile(bins["waypoint"])
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for k, v := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true", "GOOS": "linux", "GOARCH": "amd64"} {
		if settings[k] != v {
			t.Errorf("waypoint built with %s=%q, want %q", k, settings[k], v)
		}
	}
}

func goBuild(t *testing.T, ctx context.Context, pkg string) map[string]string {
	t.Helper()
	bins, err := GoBuild(ctx, moduleRoot, t.TempDir(), pkg)
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

func build(t *testing.T, spec Spec, in Inputs, st Stamp) v1.Image {
	t.Helper()
	img, err := Build(spec, in, st)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func configDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushAndPull pushes img to an in-process registry on loopback as repoTag
// and pulls it back by that tag for linux/amd64.
func pushAndPull(t *testing.T, ctx context.Context, repoTag string, img v1.Image) v1.Image {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/" + repoTag
	d, err := Push(ctx, Named{Ref: ref, Image: img}, false)
	if err != nil {
		t.Fatal(err)
	}
	if d != digest(t, img) {
		t.Errorf("Push reported %s, image is %s", d, digest(t, img))
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(tag, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("pulled manifest media type %s, want %s", desc.MediaType, types.OCIManifestSchema1)
	}
	pulled, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	return pulled
}

func checkConfig(t *testing.T, img v1.Image, spec Spec, st Stamp) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if want := []string{"/usr/local/bin/" + spec.Binaries[0]}; !slices.Equal(cf.Config.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", cf.Config.Entrypoint, want)
	}
	if len(cf.Config.Cmd) != 0 {
		t.Errorf("cmd %q, want none", cf.Config.Cmd)
	}
	if cf.Config.User != spec.User {
		t.Errorf("user %q, want %q", cf.Config.User, spec.User)
	}
	if !cf.Created.Time.Equal(st.Time) {
		t.Errorf("created %v, want the commit time %v", cf.Created.Time, st.Time)
	}
	for k, v := range map[string]string{
		LabelSource: st.Source, LabelVersion: st.Version, LabelRevision: st.Revision,
		LabelTitle: spec.Name, LabelCreated: st.Time.Format(time.RFC3339),
	} {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Errorf("%d layers, want one on an empty base", len(layers))
	}
}

func checkBinary(t *testing.T, files map[string]tarEntry, p, src string) {
	t.Helper()
	e, ok := files[p]
	if !ok {
		t.Fatalf("%s not in the image's layer", p)
	}
	if !bytes.Equal(e.data, mustRead(t, src)) {
		t.Errorf("%s in the layer differs from the built binary", p)
	}
	if e.hdr.Mode != 0o755 || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
		t.Errorf("%s: mode %o owner %d:%d, want 755 root-owned", p, e.hdr.Mode, e.hdr.Uid, e.hdr.Gid)
	}
	f, err := elf.NewFile(bytes.NewReader(e.data))
	if err != nil {
		t.Fatalf("%s: not an ELF executable: %v", p, err)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked: the image has no libc or loader", p)
		}
	}
}

type tarEntry struct {
	hdr  tar.Header
	data []byte
}

// layerFiles reads every entry of the image's layers by absolute path.
func layerFiles(t *testing.T, img v1.Image) map[string]tarEntry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]tarEntry{}
	for _, l := range layers {
		mt, err := l.MediaType()
		if err != nil || mt != types.OCILayer {
			t.Errorf("layer media type %s (%v), want %s", mt, err, types.OCILayer)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[path.Clean("/"+h.Name)] = tarEntry{hdr: *h, data: data}
		}
		rc.Close()
	}
	return files
}

// resolve finds a bare command name on the image's PATH as a runtime does:
// the first PATH directory holding an executable regular file of that name.
func resolve(t *testing.T, img v1.Image, files map[string]tarEntry, cmd string) string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range cf.Config.Env {
		p, ok := strings.CutPrefix(env, "PATH=")
		if !ok {
			continue
		}
		for _, dir := range strings.Split(p, ":") {
			e, ok := files[path.Join(dir, cmd)]
			if ok && e.hdr.Typeflag == tar.TypeReg && e.hdr.Mode&0o111 != 0 {
				return path.Join(dir, cmd)
			}
		}
	}
	return ""
}

// TestCNIAgentImageCarriesPlugin builds the agent's image from stand-in
// files: the agent installs zmesh-cni from its own executable's directory,
// so the plugin must be in the layer beside the entrypoint.
func TestCNIAgentImageCarriesPlugin(t *testing.T) {
	var spec Spec
	for _, s := range Specs() {
		if s.Name == "zmesh-cni-agent" {
			spec = s
		}
	}
	dir := t.TempDir()
	bins := map[string]string{}
	for _, b := range []string{"zmesh-cni-agent", "zmesh-cni"} {
		bins[b] = filepath.Join(dir, b)
		if err := os.WriteFile(bins[b], []byte("stand-in for "+b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := build(t, spec, Inputs{Binaries: bins}, testStamp)
	files := layerFiles(t, img)
	plugin := path.Join(path.Dir(spec.Entrypoint()[0]), "zmesh-cni")
	e, ok := files[plugin]
	if !ok || !bytes.Equal(e.data, []byte("stand-in for zmesh-cni")) || e.hdr.Mode != 0o755 {
		t.Errorf("%s in the agent's image: present %v, mode %o; want the plugin, executable", plugin, ok, e.hdr.Mode)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != Root {
		t.Errorf("agent image user %q, want %q", cf.Config.User, Root)
	}
}
