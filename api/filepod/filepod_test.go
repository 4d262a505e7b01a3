package filepod

import "testing"

// The uid is a fixed function of namespace/name: changing the UUID
// namespace would re-key every running no-cluster pod's pins and ZDS uid.
func TestUIDIsPinned(t *testing.T) {
	if got, want := UID("demo", "web"), "1dc237e4-19b6-5511-83e9-869074bf7305"; got != want {
		t.Fatalf("UID(demo, web) = %s, want %s", got, want)
	}
	if UID("demo", "web") == UID("demo", "web2") || UID("demo", "web") == UID("other", "web") {
		t.Fatal("different pods share a uid")
	}
}
