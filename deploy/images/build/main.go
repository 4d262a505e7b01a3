// Command build builds zmesh's container images (package images) from the
// source tree it runs in: it compiles every binary static, writes the
// images as an OCI layout and docker-loadable tarballs, and pushes them
// when given a registry. `make images` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/zmesh/zmesh/deploy/images"
)

// source is the repository the images' source label names.
const source = "https://github.com/zmesh/zmesh"

// localPrefix names the images when they are not pushed anywhere.
const localPrefix = "zmesh"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	out := fs.String("out", "bin/images", "output directory: oci/ (OCI image layout), <image>.tar (docker load), digests.txt, bin/")
	src := fs.String("src", ".", "the module's root, a git checkout")
	push := fs.String("push", "", "registry and repository prefix to push to, e.g. registry.example:5000/zmesh (empty: do not push)")
	insecure := fs.Bool("insecure", false, "push over plain HTTP")
	tag := fs.String("tag", "", "image tag (default: from git describe)")
	caBundle := fs.String("ca-bundle", images.CABundle, "PEM file of public roots for the images that need them")
	only := fs.String("only", "", "comma-separated image names to build (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	specs := images.Specs()
	if *only != "" {
		want := strings.Split(*only, ",")
		specs = slices.DeleteFunc(specs, func(s images.Spec) bool { return !slices.Contains(want, s.Name) })
		if len(specs) != len(want) {
			return fmt.Errorf("-only %q: unknown image name (have zmeshd, ztunnel, zmesh-cni-agent, waypoint, zmeshctl)", *only)
		}
	}

	st, err := images.StampFromGit(ctx, *src, source)
	if err != nil {
		return fmt.Errorf("read the source's version: %w", err)
	}
	if *tag == "" {
		*tag = images.Tag(st.Version)
	}
	prefix := strings.TrimSuffix(*push, "/")
	if prefix == "" {
		prefix = localPrefix
	}

	var pkgs []string
	for _, s := range specs {
		for _, b := range s.Binaries {
			if p := "./cmd/" + b; !slices.Contains(pkgs, p) {
				pkgs = append(pkgs, p)
			}
		}
	}
	fmt.Fprintf(stdout, "building %s (version %s, revision %s)\n", strings.Join(pkgs, " "), st.Version, st.Revision)
	bins, err := images.GoBuild(ctx, *src, filepath.Join(*out, "bin"), pkgs...)
	if err != nil {
		return err
	}

	var built []images.Named
	for _, s := range specs {
		img, err := images.Build(s, images.Inputs{Binaries: bins, CABundle: *caBundle}, st)
		if err != nil {
			return err
		}
		built = append(built, images.Named{Ref: prefix + "/" + s.Name + ":" + *tag, Image: img})
	}
	if err := images.WriteLayout(filepath.Join(*out, "oci"), built); err != nil {
		return err
	}
	var digests strings.Builder
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSIZE (compressed)\tSIZE (files)\tDIGEST")
	for _, n := range built {
		name := strings.TrimSuffix(filepath.Base(n.Ref), ":"+*tag)
		if err := images.WriteTarball(filepath.Join(*out, name+".tar"), n); err != nil {
			return err
		}
		d, err := n.Image.Digest()
		if err != nil {
			return fmt.Errorf("digest of %s: %w", n.Ref, err)
		}
		compressed, files, err := sizes(n)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Ref, mib(compressed), mib(files), d)
		fmt.Fprintf(&digests, "%s@%s\n", n.Ref, d)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "digests.txt"), []byte(digests.String()), 0o644); err != nil {
		return fmt.Errorf("write digests: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s/oci (OCI layout), %s/<image>.tar (docker load), %s/digests.txt\n", *out, *out, *out)

	if *push == "" {
		return nil
	}
	var errs []error
	for _, n := range built {
		d, err := images.Push(ctx, n, *insecure)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(stdout, "pushed %s@%s\n", n.Ref, d)
	}
	return errors.Join(errs...)
}

// sizes are an image's compressed size (what a pull transfers: manifest,
// config and layers) and the size of its layers' contents.
func sizes(n images.Named) (compressed, files int64, err error) {
	m, err := n.Image.RawManifest()
	if err != nil {
		return 0, 0, fmt.Errorf("manifest of %s: %w", n.Ref, err)
	}
	c, err := n.Image.RawConfigFile()
	if err != nil {
		return 0, 0, fmt.Errorf("config of %s: %w", n.Ref, err)
	}
	compressed = int64(len(m) + len(c))
	layers, err := n.Image.Layers()
	if err != nil {
		return 0, 0, fmt.Errorf("layers of %s: %w", n.Ref, err)
	}
	for _, l := range layers {
		s, err := l.Size()
		if err != nil {
			return 0, 0, fmt.Errorf("layer size of %s: %w", n.Ref, err)
		}
		compressed += s
		rc, err := l.Uncompressed()
		if err != nil {
			return 0, 0, fmt.Errorf("layer of %s: %w", n.Ref, err)
		}
		u, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("layer of %s: %w", n.Ref, err)
		}
		files += u
	}
	return compressed, files, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
