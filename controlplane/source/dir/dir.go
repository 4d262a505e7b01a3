// Package dir is the control plane's source for running without a
// cluster: a directory of YAML files (multi-document; Namespaces, Pods,
// Services and the Istio and Gateway API kinds), read at start and re-read
// whenever a file changes.
//
// A document that does not decode is reported and skipped, but what
// decoded before keeps its last good version: a typo in a policy being
// edited must not make the policy vanish (and its traffic open). An
// object whose document is rejected keeps its last good version by its
// kind and name; and since a broken document may not say which object it
// was (a YAML syntax error, a typo in its kind or name), every object its
// file had at its last good read is kept too. Removing a file, or an
// object from a file that reads cleanly, removes it.
//
// With a state directory the last good versions are also written to disk
// and read back at start, so a restart with a broken file still serves
// what was in force.
package dir

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Update is one read of the directory.
type Update struct {
	Snapshot *model.Snapshot
	// Errors are the documents that were skipped (or kept at their last
	// good version), one per document, each naming file, document and
	// field.
	Errors []error
	// Kept names the objects served at their last good version.
	Kept []model.ObjectKey
}

// Source watches one directory.
type Source struct {
	Dir string
	// Interval between checks for changes; 0 means 250ms.
	Interval time.Duration
	Log      *slog.Logger
	// StateDir, if set, keeps the last good version of every object
	// across restarts (see state.go). Empty: kept in memory only.
	StateDir string

	lastSum [sha256.Size]byte
	// good is, by file, the objects last served from it.
	good        map[string][]runtime.Object
	stateLoaded bool
	savedState  []byte
}

// Load reads the directory once. An unreadable directory is an error; bad
// documents are not (they are in Update.Errors).
func (s *Source) Load() (*Update, error) {
	files, sum, err := s.read()
	if err != nil {
		return nil, err
	}
	if !s.stateLoaded {
		s.stateLoaded = true
		s.loadState()
	}
	s.lastSum = sum
	return s.decode(files), nil
}

// Run calls publish with the first read and again after every change,
// until ctx ends. A change is taken once two reads an interval apart
// agree, so a file caught half-written is not served.
func (s *Source) Run(ctx context.Context, publish func(*Update)) error {
	u, err := s.Load()
	if err != nil {
		return err
	}
	s.report(u)
	publish(u)
	interval := s.Interval
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var pending *[sha256.Size]byte
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		files, sum, err := s.read()
		if err != nil {
			s.log().Warn("config directory unreadable, keeping the last config", "dir", s.Dir, "error", err)
			continue
		}
		if sum == s.lastSum {
			pending = nil
			continue
		}
		if pending == nil || *pending != sum {
			pending = &sum
			continue
		}
		pending = nil
		s.lastSum = sum
		u := s.decode(files)
		s.report(u)
		publish(u)
	}
}

type file struct {
	name string
	data []byte
}

func (s *Source) read() ([]file, [sha256.Size]byte, error) {
	var files []file
	h := sha256.New()
	err := filepath.WalkDir(s.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != s.Dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml", ".json":
		default:
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return nil // editors' swap and temp files
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil // removed while we walked
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.Dir, path)
		files = append(files, file{name: rel, data: data})
		fmt.Fprintf(h, "%s\x00%d\x00", rel, len(data))
		h.Write(data)
		return nil
	})
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return files, sum, err
}

func (s *Source) decode(files []file) *Update {
	snap := &model.Snapshot{}
	u := &Update{Snapshot: snap}
	fresh := map[string][]runtime.Object{} // by file, what decoded now
	rejected := map[string][]model.ObjectKey{}
	unsure := map[string]bool{} // files with a document we cannot name
	for _, f := range files {
		part := &model.Snapshot{}
		for _, err := range part.Decode(bytes.NewReader(f.data), f.name) {
			u.Errors = append(u.Errors, err)
			var de *model.DecodeError
			switch {
			case errors.Is(err, model.ErrKindNotRead):
				// Not mesh config: nothing of ours was lost.
			case errors.As(err, &de) && de.Key.Kind != "":
				rejected[f.name] = append(rejected[f.name], de.Key)
				// The key read is only what the broken document says now:
				// a typo in its kind or name would hide which object it was.
				unsure[f.name] = true
			default:
				unsure[f.name] = true
			}
		}
		for _, p := range part.Pods {
			model.NormalizeFilePod(p)
		}
		fresh[f.name] = objects(part)
	}

	// What decoded now is served; what did not keeps its last good
	// version: by key wherever it was before, and for a file with a
	// document that could not be named, every object the file had.
	seen := map[model.ObjectKey]bool{}
	good := map[string][]runtime.Object{}
	for _, f := range files {
		for _, obj := range fresh[f.name] {
			snap.Add(obj)
			seen[model.KeyOf(obj)] = true
		}
		good[f.name] = fresh[f.name]
	}
	byKey := map[model.ObjectKey]runtime.Object{}
	for _, objs := range s.good {
		for _, obj := range objs {
			byKey[model.KeyOf(obj)] = obj
		}
	}
	keep := func(file string, obj runtime.Object) {
		k := model.KeyOf(obj)
		if seen[k] {
			return
		}
		seen[k] = true
		snap.Add(obj)
		good[file] = append(good[file], obj)
		u.Kept = append(u.Kept, k)
	}
	for _, f := range files {
		for _, k := range rejected[f.name] {
			if obj, ok := byKey[k]; ok {
				keep(f.name, obj)
			}
		}
	}
	for _, f := range files {
		if unsure[f.name] {
			for _, obj := range s.good[f.name] {
				keep(f.name, obj)
			}
		}
	}
	snap.Sort()
	slices.SortFunc(u.Kept, func(a, b model.ObjectKey) int { return strings.Compare(a.String(), b.String()) })
	s.good = good
	s.saveState()
	return u
}

func (s *Source) report(u *Update) {
	for _, err := range u.Errors {
		s.log().Error("config rejected", "error", err)
	}
	for _, k := range u.Kept {
		s.log().Warn("serving the last good version", "object", k.String())
	}
	snap := u.Snapshot
	s.log().Info("config loaded", "dir", s.Dir, "namespaces", len(snap.Namespaces), "pods", len(snap.Pods), "services", len(snap.Services),
		"authorizationPolicies", len(snap.AuthorizationPolicies), "peerAuthentications", len(snap.PeerAuthentications), "errors", len(u.Errors))
}

func (s *Source) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// objects lists every object of snap.
func objects(snap *model.Snapshot) []runtime.Object {
	var out []runtime.Object
	add := func(objs ...runtime.Object) { out = append(out, objs...) }
	for _, o := range snap.Namespaces {
		add(o)
	}
	for _, o := range snap.Pods {
		add(o)
	}
	for _, o := range snap.Nodes {
		add(o)
	}
	for _, o := range snap.Services {
		add(o)
	}
	for _, o := range snap.ServiceEntries {
		add(o)
	}
	for _, o := range snap.PeerAuthentications {
		add(o)
	}
	for _, o := range snap.AuthorizationPolicies {
		add(o)
	}
	for _, o := range snap.GatewayClasses {
		add(o)
	}
	for _, o := range snap.Gateways {
		add(o)
	}
	for _, o := range snap.RequestAuthentications {
		add(o)
	}
	for _, o := range snap.VirtualServices {
		add(o)
	}
	for _, o := range snap.DestinationRules {
		add(o)
	}
	for _, o := range snap.IstioGateways {
		add(o)
	}
	for _, o := range snap.HTTPRoutes {
		add(o)
	}
	for _, o := range snap.GRPCRoutes {
		add(o)
	}
	for _, o := range snap.ConfigMaps {
		add(o)
	}
	return slices.Clip(out)
}
