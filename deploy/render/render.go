// Package render renders zmesh's Helm chart (deploy/charts/zmesh) with
// Helm's Go SDK, as `helm template` does: the chart's values merged with
// the caller's, the templates executed, and the objects put in Helm's
// install order as one YAML stream. `make generate` writes
// deploy/manifests/zmesh.yaml with it; tests render with it.
package render

import (
	"bytes"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"helm.sh/helm/v4/pkg/strvals"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/deploy/charts"
	crdfiles "github.com/zmesh/zmesh/deploy/crds"
)

// Options say what to render.
type Options struct {
	// Chart is the chart's directory; default: the chart built into the
	// binary (EmbeddedChart), the repository's deploy/charts/zmesh as it
	// was at build time.
	Chart string
	// Release is the release name; default "zmesh".
	Release string
	// Namespace is the release namespace; default "istio-system".
	Namespace string
	// Values override the chart's values.yaml (merged table by table).
	Values map[string]any
	// IncludeCRDs puts the chart's crds/ first, as `helm template
	// --include-crds` does; `helm install` creates them before the rest.
	IncludeCRDs bool
}

// ChartDir is the repository's chart, found from this source file.
func ChartDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "charts", "zmesh")
}

// Manifest is one rendered object.
type Manifest struct {
	// Source is the template it came from, e.g. zmesh/templates/ztunnel.yaml.
	Source string
	Kind   string
	Name   string
	// YAML is the object, without a document separator.
	YAML string
}

// Render renders the chart and returns its objects in install order.
func Render(o Options) ([]Manifest, error) {
	if o.Release == "" {
		o.Release = "zmesh"
	}
	if o.Namespace == "" {
		o.Namespace = "istio-system"
	}
	var ch *chart.Chart
	var err error
	if o.Chart == "" {
		ch, err = EmbeddedChart()
	} else if ch, err = loader.LoadDir(o.Chart); err != nil {
		err = fmt.Errorf("load chart %s: %w", o.Chart, err)
	}
	if err != nil {
		return nil, err
	}
	vals, err := chartutil.ToRenderValues(ch, o.Values, common.ReleaseOptions{
		Name: o.Release, Namespace: o.Namespace, Revision: 1, IsInstall: true,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart: %w", err)
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("sort rendered objects: %w", err)
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart has hooks (%s): a static render would drop them", hooks[0].Path)
	}
	var out []Manifest
	if o.IncludeCRDs {
		if out, err = crds(ch.CRDObjects()); err != nil {
			return nil, err
		}
	}
	for _, m := range manifests {
		mf := Manifest{Source: m.Name, YAML: strings.TrimSpace(m.Content)}
		if m.Head != nil {
			mf.Kind = m.Head.Kind
			if m.Head.Metadata != nil {
				mf.Name = m.Head.Metadata.Name
			}
		}
		out = append(out, mf)
	}
	return out, nil
}

// EmbeddedChart loads the chart built into the binary (package
// deploy/charts, its crds/ from package deploy/crds), leaving out what
// its .helmignore names, as loading the directory does.
func EmbeddedChart() (*chart.Chart, error) {
	var files []*archive.BufferedFile
	ignore, err := fs.ReadFile(charts.Zmesh, "zmesh/.helmignore")
	if err != nil {
		return nil, fmt.Errorf("embedded chart: %w", err)
	}
	var patterns []string
	for line := range strings.Lines(string(ignore)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	ignored := func(name string) bool {
		for _, p := range patterns {
			if ok, _ := path.Match(p, name); ok || p == name {
				return true
			}
		}
		return false
	}
	add := func(fsys fs.FS, root, prefix string) error {
		return fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			name := prefix + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
			if ignored(name) {
				return nil
			}
			data, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			files = append(files, &archive.BufferedFile{Name: name, Data: data})
			return nil
		})
	}
	if err := add(charts.Zmesh, "zmesh", ""); err != nil {
		return nil, fmt.Errorf("embedded chart: %w", err)
	}
	if err := add(crdfiles.Files, ".", "crds/"); err != nil {
		return nil, fmt.Errorf("embedded chart CRDs: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load embedded chart: %w", err)
	}
	return ch, nil
}

// docSep separates the documents of a YAML stream.
var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// crds returns the objects of the chart's crds/ files, file by file in
// name order, each file's in its order.
func crds(files []chart.CRD) ([]Manifest, error) {
	slices.SortFunc(files, func(a, b chart.CRD) int { return strings.Compare(a.Name, b.Name) })
	var out []Manifest
	for _, f := range files {
		for _, doc := range docSep.Split(string(f.File.Data), -1) {
			var head releaseutil.SimpleHead
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return nil, fmt.Errorf("%s: %w", f.Name, err)
			}
			if head.Kind == "" {
				continue // comments only
			}
			m := Manifest{Source: "zmesh/" + f.Name, Kind: head.Kind, YAML: strings.TrimSpace(doc)}
			if head.Metadata != nil {
				m.Name = head.Metadata.Name
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// YAML joins manifests into one stream, each document headed by the
// template it came from, as `helm template` prints them.
func YAML(ms []Manifest) []byte {
	var b bytes.Buffer
	for _, m := range ms {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Source, m.YAML)
	}
	return b.Bytes()
}

// ParseValues builds the values of -f files and --set assignments, as
// helm's flags of the same names do: files merged in order, then each
// assignment (a.b=c,d=e) on top.
func ParseValues(files, sets []string) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("values file: %w", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("values file %s: %w", f, err)
		}
		vals = Merge(vals, m)
	}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("--set %q: %w", s, err)
		}
	}
	return vals, nil
}

// Merge returns base with over laid on top: tables merge key by key,
// anything else in over replaces base's.
func Merge(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range over {
		if bt, ok := out[k].(map[string]any); ok {
			if ot, ok := v.(map[string]any); ok {
				out[k] = Merge(bt, ot)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// StaticHeader heads deploy/manifests/zmesh.yaml.
const StaticHeader = "# Generated by make generate-manifests: deploy/charts/zmesh with its CRDs, its default values\n" +
	"# and createNamespace=true, in namespace istio-system. DO NOT EDIT.\n" +
	"# Apply with kubectl apply --server-side -f (the HTTPRoute CRD is too large for client-side apply).\n"

// Static renders deploy/manifests/zmesh.yaml: the chart's defaults, with
// the namespace, for kubectl apply.
func Static() ([]byte, error) {
	ms, err := Render(Options{IncludeCRDs: true, Values: map[string]any{"createNamespace": true}})
	if err != nil {
		return nil, err
	}
	return append([]byte(StaticHeader), YAML(ms)...), nil
}
