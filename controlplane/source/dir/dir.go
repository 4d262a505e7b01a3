// Package dir is the control plane's source for running without a
// cluster: a directory of YAML files (multi-document; Namespaces, Pods,
// Services and the Istio and Gateway API kinds), read at start and re-read
// whenever a file changes.
//
// A document that does not decode is reported and skipped, but an object
// that decoded before keeps its last good version: a typo in a policy
// being edited must not make the policy vanish (and its traffic open).
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

	lastSum [sha256.Size]byte
	good    map[model.ObjectKey]runtime.Object
}

// Load reads the directory once. An unreadable directory is an error; bad
// documents are not (they are in Update.Errors).
func (s *Source) Load() (*Update, error) {
	files, sum, err := s.read()
	if err != nil {
		return nil, err
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
	for _, f := range files {
		u.Errors = append(u.Errors, snap.Decode(bytes.NewReader(f.data), f.name)...)
	}
	for _, p := range snap.Pods {
		model.NormalizeFilePod(p)
	}
	// Objects that failed this time but decoded before keep serving.
	seen := map[model.ObjectKey]bool{}
	for _, obj := range objects(snap) {
		seen[model.KeyOf(obj)] = true
	}
	for _, err := range u.Errors {
		var de *model.DecodeError
		if !errors.As(err, &de) || de.Key.Kind == "" || seen[de.Key] {
			continue
		}
		if old, ok := s.good[de.Key]; ok {
			snap.Add(old)
			seen[de.Key] = true
			u.Kept = append(u.Kept, de.Key)
		}
	}
	snap.Sort()
	s.good = map[model.ObjectKey]runtime.Object{}
	for _, obj := range objects(snap) {
		s.good[model.KeyOf(obj)] = obj
	}
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
	return slices.Clip(out)
}
