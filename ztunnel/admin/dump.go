package admin

import (
	"encoding/json"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// ConfigDump is what GET /config_dump shows and `zmeshctl ztunnel-config`
// reads: the state's resources in Istio's protobuf JSON, the node's pods,
// their certificates and the xDS client's status.
type ConfigDump struct {
	Version      uint64            `json:"version"`
	Workloads    []json.RawMessage `json:"workloads"`
	Services     []json.RawMessage `json:"services"`
	Policies     []json.RawMessage `json:"policies"`
	Pods         []proxy.PodInfo   `json:"pods"`
	Certificates []Certificate     `json:"certificates"`
	XDS          *xdsclient.Status `json:"xds,omitempty"`
}

// Certificate is one identity's certificate in the dump.
type Certificate struct {
	Identity     string    `json:"identity"`
	NotBefore    time.Time `json:"notBefore,omitzero"`
	NotAfter     time.Time `json:"notAfter,omitzero"`
	NextRotation time.Time `json:"nextRotation,omitzero"`
	LastError    string    `json:"lastError,omitempty"`
}

// NewConfigDump assembles a dump; xs is nil when config comes from a file.
func NewConfigDump(snap *state.Snapshot, pods []proxy.PodInfo, certs []identity.CertInfo, xs *xdsclient.Status) *ConfigDump {
	raw := func(m proto.Message) json.RawMessage {
		b, _ := protojson.Marshal(m)
		return b
	}
	d := &ConfigDump{Version: snap.Version(), Pods: pods, XDS: xs}
	for _, w := range snap.Workloads() {
		d.Workloads = append(d.Workloads, raw(w.Raw()))
	}
	for _, s := range snap.Services() {
		d.Services = append(d.Services, raw(s.Raw()))
	}
	for _, p := range snap.Policies() {
		d.Policies = append(d.Policies, raw(p.Raw()))
	}
	for _, c := range certs {
		d.Certificates = append(d.Certificates, Certificate{c.ID.String(), c.NotBefore, c.NotAfter, c.NextRotation, c.LastError})
	}
	return d
}
