package dir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/apimachinery/pkg/runtime"

	"github.com/zmesh/zmesh/controlplane/model"
)

// stateFile is the name of the last good versions in StateDir.
const stateFile = "last-good.json"

// state is what StateDir holds: the objects last served, by the file they
// came from, for one config directory.
type state struct {
	// Dir is the config directory's absolute path: a state written for
	// another directory is not loaded.
	Dir   string                       `json:"dir"`
	Files map[string][]json.RawMessage `json:"files"`
}

// loadState reads the last good versions a previous run saved. A missing,
// unreadable or foreign state only costs the memory of the past: it is
// logged, and the directory is served as it reads now.
func (s *Source) loadState() {
	if s.StateDir == "" {
		return
	}
	path := filepath.Join(s.StateDir, stateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		s.log().Warn("last good config unreadable, starting without it", "path", path, "error", err)
		return
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		s.log().Warn("last good config unreadable, starting without it", "path", path, "error", err)
		return
	}
	if abs := s.absDir(); st.Dir != abs {
		s.log().Warn("last good config is of another directory, starting without it", "path", path, "dir", st.Dir, "want", abs)
		return
	}
	s.good = map[string][]runtime.Object{}
	for name, docs := range st.Files {
		for i, doc := range docs {
			part := &model.Snapshot{}
			if errs := part.Decode(bytes.NewReader(doc), fmt.Sprintf("%s (%s)", path, name)); len(errs) > 0 {
				s.log().Warn("last good object unreadable, dropped", "path", path, "file", name, "index", i, "error", errors.Join(errs...))
				continue
			}
			s.good[name] = append(s.good[name], objects(part)...)
		}
	}
	s.savedState = data
}

// saveState writes s.good when it changed, atomically (write, sync,
// rename), so a crash leaves the old state or the new one.
func (s *Source) saveState() {
	if s.StateDir == "" {
		return
	}
	st := state{Dir: s.absDir(), Files: map[string][]json.RawMessage{}}
	for name, objs := range s.good {
		for _, obj := range objs {
			b, err := json.Marshal(obj)
			if err != nil {
				s.log().Error("last good config not saved", "object", model.KeyOf(obj).String(), "error", err)
				return
			}
			st.Files[name] = append(st.Files[name], b)
		}
	}
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		s.log().Error("last good config not saved", "error", err)
		return
	}
	if bytes.Equal(data, s.savedState) {
		return
	}
	if err := writeAtomic(filepath.Join(s.StateDir, stateFile), data); err != nil {
		s.log().Error("last good config not saved: a restart with a broken file would not keep it", "dir", s.StateDir, "error", err)
		return
	}
	s.savedState = slices.Clip(data)
}

func (s *Source) absDir() string {
	abs, err := filepath.Abs(s.Dir)
	if err != nil {
		return s.Dir
	}
	return abs
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
