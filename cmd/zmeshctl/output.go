package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// format is the -o flag: "" (a table), "json" or "yaml".
type format string

func addOutputFlag(fs *pflag.FlagSet, f *format) {
	fs.FuncP("output", "o", "output format: table (default), json or yaml", func(s string) error {
		switch s {
		case "table":
			*f = ""
		case "json", "yaml":
			*f = format(s)
		default:
			return fmt.Errorf("want table, json or yaml")
		}
		return nil
	})
}

// write encodes v (a value encoding/json can marshal; json.RawMessage
// parts pass through as they are) as JSON or YAML.
func (f format) write(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if f == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encode output as yaml: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// table is rows under a header, printed kubectl-style: columns padded
// with spaces, no borders.
type table struct {
	header []string
	rows   [][]string
}

func (t table) write(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 6, 4, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.header, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// orNone shows an empty value the way istioctl does.
func orNone(s string) string {
	if s == "" {
		return "None"
	}
	return s
}
