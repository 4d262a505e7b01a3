// Command render writes the YAML of zmesh's Helm chart, rendered with
// Helm's Go SDK (no helm binary): `make generate` runs it for
// deploy/manifests/zmesh.yaml.
//
//	go run ./deploy/render/cmd [-include-crds] [-f values.yaml] [-set a.b=c] [-namespace ns] [-o out.yaml]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/zmesh/zmesh/deploy/render"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var files, sets list
	o := render.Options{}
	out := flag.String("o", "", "output file (default: stdout)")
	static := flag.Bool("static", false, "render deploy/manifests/zmesh.yaml (the defaults and the namespace); other flags but -o are ignored")
	flag.StringVar(&o.Chart, "chart", "", "chart directory (default: the repository's deploy/charts/zmesh)")
	flag.StringVar(&o.Release, "name", "zmesh", "release name")
	flag.BoolVar(&o.IncludeCRDs, "include-crds", false, "put the chart's CRDs first, as helm template --include-crds")
	flag.StringVar(&o.Namespace, "namespace", "istio-system", "release namespace")
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "a value, key.path=value (repeatable)")
	flag.Parse()
	// Helm's loader logs each symbolic link it follows at info level; the
	// chart's crds/ is one, on purpose (the repository's deploy/crds).
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err := run(o, files, sets, *static, *out); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(o render.Options, files, sets []string, static bool, out string) error {
	var b []byte
	var err error
	if static {
		b, err = render.Static()
	} else {
		b, err = renderWith(o, files, sets)
	}
	if err != nil {
		return err
	}
	if out == "" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(out, b, 0o644)
}

func renderWith(o render.Options, files, sets []string) ([]byte, error) {
	var err error
	if o.Values, err = render.ParseValues(files, sets); err != nil {
		return nil, err
	}
	ms, err := render.Render(o)
	if err != nil {
		return nil, err
	}
	return render.YAML(ms), nil
}
