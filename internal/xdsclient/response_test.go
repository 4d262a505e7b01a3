package xdsclient

import (
	"errors"
	"maps"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

func TestChanges(t *testing.T) {
	resp := &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl: TypeAddress,
		Resources: []*discoveryv3.Resource{
			res("a", "v1", address(t, "a")),
			{ResourceName: &discoveryv3.ResourceName{Name: "b"}, Version: "v2", Resource: address(t, "b")},
			res("", "v1", address(t, "x")),
			res("heartbeat", "v1", nil),
			res("p", "v1", authz(t, "p")),
		},
		RemovedResources:     []string{"c"},
		RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "d"}},
	}
	updated, removed, rejected := changes(resp)
	var names []string
	for _, r := range updated {
		names = append(names, r.Name+"@"+r.Version)
	}
	if want := []string{"a@v1", "b@v2"}; !slices.Equal(names, want) {
		t.Errorf("updated = %v, want %v", names, want)
	}
	if want := []string{"c", "d"}; !slices.Equal(removed, want) {
		t.Errorf("removed = %v, want %v", removed, want)
	}
	if got, want := slices.Sorted(maps.Keys(rejected)), []string{"", "heartbeat", "p"}; !slices.Equal(got, want) {
		t.Errorf("rejected = %v, want %v", rejected, want)
	}
	if !errors.Is(rejected[""], errNoName) || !errors.Is(rejected["heartbeat"], errNoBody) {
		t.Errorf("rejected for the wrong reasons: %v", rejected)
	}
}

func TestRecord(t *testing.T) {
	bad := errors.New("bad")
	for _, tc := range []struct {
		name     string
		held     map[string]string
		updated  []Resource
		removed  []string
		rejected map[string]error
		want     map[string]string
	}{
		{"accepted update", map[string]string{"a": "v1"}, []Resource{{Name: "a", Version: "v2"}, {Name: "b", Version: "v1"}}, nil, nil,
			map[string]string{"a": "v2", "b": "v1"}},
		{"rejected update keeps the old version", map[string]string{"a": "v1"}, []Resource{{Name: "a", Version: "v2"}}, nil,
			map[string]error{"a": bad}, map[string]string{"a": "v1"}},
		{"rejected new resource is not held", map[string]string{}, []Resource{{Name: "a", Version: "v1"}}, nil,
			map[string]error{"a": bad}, map[string]string{}},
		{"accepted removal", map[string]string{"a": "v1", "b": "v1"}, nil, []string{"a", "unknown"}, nil,
			map[string]string{"b": "v1"}},
		{"rejected removal stays held", map[string]string{"a": "v1"}, nil, []string{"a"},
			map[string]error{"a": bad}, map[string]string{"a": "v1"}},
	} {
		record(tc.held, tc.updated, tc.removed, tc.rejected)
		if !maps.Equal(tc.held, tc.want) {
			t.Errorf("%s: held = %v, want %v", tc.name, tc.held, tc.want)
		}
	}
}

func TestNackMessageIsSorted(t *testing.T) {
	got := nackMessage(map[string]error{"zeta": errors.New("z"), "alpha": errors.New("a"), "": errNoName})
	if want := `"": resource has no name; alpha: a; zeta: z`; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if r := reply(TypeAddress, "n", nil); r.GetErrorDetail() != nil || r.GetResponseNonce() != "n" || r.GetTypeUrl() != TypeAddress {
		t.Errorf("reply with nothing rejected = %v, want an ACK", r)
	}
}
