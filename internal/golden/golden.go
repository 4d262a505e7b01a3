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

// RunCases runs every testdata/*.txtar archive of the calling package's
// decision tests as a subtest. An archive holds the inputs setup reads and
// a file "cases": one case a line, "INPUT -> DECISION", blank lines and
// #-comments kept. setup returns the decision function for one INPUT; its
// output must equal DECISION. With update, the DECISION parts are
// rewritten from the current behaviour instead.
func RunCases(t *testing.T, update bool, setup func(t *testing.T, ar Archive) func(input string) (string, error)) {
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
			runCases(t, file, update, setup)
		})
	}
}

func runCases(t *testing.T, file string, update bool, setup func(t *testing.T, ar Archive) func(input string) (string, error)) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ar := Parse(data)
	cases, ok := ar.File("cases")
	if !ok {
		t.Fatal("archive has no cases")
	}
	decide := setup(t, ar)
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
			t.Fatalf("cases:%d: no \"->\" in %q", i+1, line)
		}
		input = strings.TrimSpace(input)
		got, err := decide(input)
		if err != nil {
			t.Fatalf("cases:%d: %v", i+1, err)
		}
		if want = strings.TrimSpace(want); !update && got != want {
			t.Errorf("cases:%d: %s\n got: %s\nwant: %s", i+1, input, got, want)
		}
		fmt.Fprintf(&out, "%s -> %s\n", input, got)
		ran++
	}
	if ran == 0 {
		t.Fatal("no cases")
	}
	t.Logf("%d cases", ran)
	if update {
		ar.Set("cases", out.Bytes())
		if err := os.WriteFile(file, ar.Format(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
