package identity

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		in      string
		want    Workload
		wantErr error // nil: any error if !ok
		ok      bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/bookinfo", ok: true,
			want: Workload{TrustDomain: testTD, Namespace: "default", ServiceAccount: "bookinfo"}},
		{in: "spiffe://example.org/ns/a-b/sa/c.d_e", ok: true,
			want: Workload{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Namespace: "a-b", ServiceAccount: "c.d_e"}},
		{in: "spiffe://cluster.local/ns/default", wantErr: ErrNotWorkloadID},
		{in: "spiffe://cluster.local/ns/default/sa/x/extra", wantErr: ErrNotWorkloadID},
		{in: "spiffe://cluster.local/sa/x/ns/default", wantErr: ErrNotWorkloadID},
		{in: "spiffe://cluster.local", wantErr: ErrNotWorkloadID},
		{in: "spiffe://cluster.local/ns//sa/x"},
		{in: "spiffe://cluster.local/ns/default/sa/"},
		{in: "spiffe://Cluster.local/ns/default/sa/x"},
		{in: "spiffe://cluster.local/ns/Default/sa/X", ok: true,
			want: Workload{TrustDomain: testTD, Namespace: "Default", ServiceAccount: "X"}}, // path case is kept
		{in: "spiffe://clu$ter/ns/a/sa/b"},
		{in: "spiffe:///ns/a/sa/b"},
		{in: "https://cluster.local/ns/a/sa/b"},
		{in: ""},
		{in: "spiffe://cluster.local/ns/a%2Fb/sa/c"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseWorkload(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("accepted as %+v", got)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			id, err := got.ID()
			if err != nil || id.String() != tt.in {
				t.Fatalf("ID() = %s, %v; want %s", id, err, tt.in)
			}
		})
	}
}

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		name   string
		td     spiffeid.TrustDomain
		ns, sa string
		want   string // empty: error
	}{
		{"valid", testTD, "default", "a", "spiffe://cluster.local/ns/default/sa/a"},
		{"empty trust domain", spiffeid.TrustDomain{}, "default", "a", ""},
		{"empty namespace", testTD, "", "a", ""},
		{"empty service account", testTD, "default", "", ""},
		{"slash in namespace", testTD, "a/b", "a", ""},
		{"dot segment", testTD, "..", "a", ""},
		{"bad character", testTD, "a b", "a", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("accepted as %s", id)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("got %s, %v; want %s", id, err, tt.want)
			}
		})
	}
}
