// Package testutil holds the few helpers that tests across the module
// would otherwise each write again: protobuf messages from YAML and a
// buffer that a server's logger and the test can share.
//
// Only tests import it.
package testutil

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// ProtoYAML fills m from YAML written with protojson's field names, and
// returns it.
func ProtoYAML[M proto.Message](t testing.TB, y string, m M) M {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	return m
}

// AnyYAML is the resource of typeURL that the YAML describes, as xDS sends
// it.
func AnyYAML(t testing.TB, typeURL, y string) *anypb.Any {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(typeURL)
	if err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(ProtoYAML(t, y, mt.New().Interface()))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// SyncBuffer is a bytes.Buffer that may be written and read from several
// goroutines at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Eventually calls f every 100ms until it returns nil, and fails the test
// with f's last error once timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
