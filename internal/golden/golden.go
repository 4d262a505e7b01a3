// Package golden reads and rewrites the txtar archives of the golden
// tests (testdata/*.txtar): inputs and expected outputs side by side, the
// outputs rewritten in place by a test's -update flag.
package golden

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/tools/txtar"
)

// Archive is one golden file.
type Archive struct{ a *txtar.Archive }

// Parse reads an archive: a comment, then files introduced by "-- name --".
func Parse(data []byte) Archive { return Archive{txtar.Parse(data)} }

// File returns the contents of the file called name.
func (ar Archive) File(name string) ([]byte, bool) {
	for _, f := range ar.a.Files {
		if f.Name == name {
			return f.Data, true
		}
	}
	return nil, false
}

// Set replaces the file called name, or adds it at the end.
func (ar Archive) Set(name string, data []byte) {
	for i := range ar.a.Files {
		if ar.a.Files[i].Name == name {
			ar.a.Files[i].Data = data
			return
		}
	}
	ar.a.Files = append(ar.a.Files, txtar.File{Name: name, Data: data})
}

// Format renders the archive back, each file ending with a newline.
func (ar Archive) Format() []byte { return txtar.Format(ar.a) }

// Each runs check on every testdata/*.txtar archive of the calling
// package, one subtest an archive. check compares what it computes with the
// archive's expected sections and Sets them to what it got; with update the
// archive is then written back, so -update rewrites the expectations.
func Each(t *testing.T, update bool, check func(t *testing.T, ar Archive)) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.txtar archives")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			ar := Parse(data)
			check(t, ar)
			if update {
				if err := os.WriteFile(file, ar.Format(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// CheckLines checks the archive's section name, one case a line, "INPUT ->
// DECISION" (blank lines and #-comments kept): decide's output for INPUT
// must equal DECISION, unless update. The section is Set to the decisions
// made, for Each to write back.
func CheckLines(t *testing.T, ar Archive, name string, update bool, decide func(input string) (string, error)) {
	t.Helper()
	cases, ok := ar.File(name)
	if !ok {
		t.Fatalf("archive has no %s", name)
	}
	var out bytes.Buffer
	ran := 0
	for i, line := range strings.Split(strings.TrimRight(string(cases), "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			out.WriteString(line + "\n")
			continue
		}
		input, want, ok := strings.Cut(line, "->")
		if !ok {
			t.Fatalf("%s:%d: no \"->\" in %q", name, i+1, line)
		}
		input = strings.TrimSpace(input)
		got, err := decide(input)
		if err != nil {
			t.Fatalf("%s:%d: %v", name, i+1, err)
		}
		if want = strings.TrimSpace(want); !update && got != want {
			t.Errorf("%s:%d: %s\n got: %s\nwant: %s", name, i+1, input, got, want)
		}
		fmt.Fprintf(&out, "%s -> %s\n", input, got)
		ran++
	}
	if ran == 0 {
		t.Fatalf("no cases in %s", name)
	}
	t.Logf("%d cases", ran)
	ar.Set(name, out.Bytes())
}

// RunCases runs the decision archives of the calling package: each holds
// the inputs setup reads and a section "cases" that CheckLines checks
// against the decision function setup returns.
func RunCases(t *testing.T, update bool, setup func(t *testing.T, ar Archive) func(input string) (string, error)) {
	t.Helper()
	Each(t, update, func(t *testing.T, ar Archive) {
		CheckLines(t, ar, "cases", update, setup(t, ar))
	})
}
