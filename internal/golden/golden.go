// Package golden reads and rewrites the txtar archives of the golden
// tests (testdata/*.txtar): inputs and expected outputs side by side, the
// outputs rewritten in place by a test's -update flag.
package golden

import "golang.org/x/tools/txtar"

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
