package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
)

// dump is a ztunnel's /config_dump (admin.ConfigDump): the
// resources decoded into the wire types, each kept with the JSON the
// ztunnel sent so that -o json shows it unchanged.
type dump struct {
	Version      uint64
	Workloads    []resource[*workload.Workload]
	Services     []resource[*workload.Service]
	Policies     []resource[*security.Authorization]
	Certificates []certificate
}

type resource[M proto.Message] struct {
	raw json.RawMessage
	m   M
}

// certificate is one identity's certificate as the dump reports it
// (ztunnel/admin.Certificate's JSON; the tests build dumps with that
// package, so the two cannot drift apart unnoticed).
type certificate struct {
	Identity     string    `json:"identity"`
	NotBefore    time.Time `json:"notBefore,omitzero"`
	NotAfter     time.Time `json:"notAfter,omitzero"`
	NextRotation time.Time `json:"nextRotation,omitzero"`
	LastError    string    `json:"lastError,omitempty"`
}

func decodeDump(data []byte) (*dump, error) {
	var raw struct {
		Version      uint64            `json:"version"`
		Workloads    []json.RawMessage `json:"workloads"`
		Services     []json.RawMessage `json:"services"`
		Policies     []json.RawMessage `json:"policies"`
		Certificates []certificate     `json:"certificates"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	d := &dump{Version: raw.Version, Certificates: raw.Certificates}
	var err error
	if d.Workloads, err = decodeResources(raw.Workloads, "workload", func() *workload.Workload { return new(workload.Workload) }); err != nil {
		return nil, err
	}
	if d.Services, err = decodeResources(raw.Services, "service", func() *workload.Service { return new(workload.Service) }); err != nil {
		return nil, err
	}
	if d.Policies, err = decodeResources(raw.Policies, "policy", func() *security.Authorization { return new(security.Authorization) }); err != nil {
		return nil, err
	}
	slices.SortFunc(d.Workloads, func(a, b resource[*workload.Workload]) int {
		return cmp.Or(cmp.Compare(a.m.GetNamespace(), b.m.GetNamespace()), cmp.Compare(a.m.GetName(), b.m.GetName()), cmp.Compare(a.m.GetUid(), b.m.GetUid()))
	})
	slices.SortFunc(d.Services, func(a, b resource[*workload.Service]) int {
		return cmp.Or(cmp.Compare(a.m.GetNamespace(), b.m.GetNamespace()), cmp.Compare(a.m.GetName(), b.m.GetName()), cmp.Compare(a.m.GetHostname(), b.m.GetHostname()))
	})
	slices.SortFunc(d.Policies, func(a, b resource[*security.Authorization]) int {
		return cmp.Or(cmp.Compare(a.m.GetNamespace(), b.m.GetNamespace()), cmp.Compare(a.m.GetName(), b.m.GetName()))
	})
	slices.SortFunc(d.Certificates, func(a, b certificate) int { return cmp.Compare(a.Identity, b.Identity) })
	return d, nil
}

// decodeResources decodes protobuf JSON. Unknown fields are skipped: a
// ztunnel newer than zmeshctl must still be readable.
func decodeResources[M proto.Message](raws []json.RawMessage, kind string, newM func() M) ([]resource[M], error) {
	out := make([]resource[M], 0, len(raws))
	for i, r := range raws {
		m := newM()
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r, m); err != nil {
			return nil, fmt.Errorf("decode config dump: %s %d: %w", kind, i, err)
		}
		out = append(out, resource[M]{raw: r, m: m})
	}
	return out, nil
}

// dumpFilter selects what ztunnel-config shows.
type dumpFilter struct {
	node, namespace string
}

func (f dumpFilter) workload(w *workload.Workload) bool {
	return (f.node == "" || w.GetNode() == f.node) && (f.namespace == "" || w.GetNamespace() == f.namespace)
}

func (f dumpFilter) namespaced(ns string) bool {
	return f.namespace == "" || ns == f.namespace
}

func raws[M proto.Message](rs []resource[M], keep func(M) bool) []json.RawMessage {
	out := []json.RawMessage{}
	for _, r := range rs {
		if keep(r.m) {
			out = append(out, r.raw)
		}
	}
	return out
}

// export is what -o json|yaml prints for section: a list, or for "all" an
// object with every list.
func (d *dump) export(section string, f dumpFilter) any {
	certs := d.Certificates
	if certs == nil {
		certs = []certificate{}
	}
	all := map[string]any{
		"workloads":    raws(d.Workloads, f.workload),
		"services":     raws(d.Services, func(s *workload.Service) bool { return f.namespaced(s.GetNamespace()) }),
		"policies":     raws(d.Policies, func(p *security.Authorization) bool { return f.namespaced(p.GetNamespace()) }),
		"certificates": certs,
	}
	if section == "all" {
		return all
	}
	return all[section]
}

func workloadTable(d *dump, f dumpFilter) table {
	t := table{header: []string{"NAMESPACE", "POD-NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"}}
	for _, r := range d.Workloads {
		w := r.m
		if !f.workload(w) {
			continue
		}
		addr := ips(w.GetAddresses())
		if addr == "" {
			addr = w.GetHostname()
		}
		t.rows = append(t.rows, []string{
			w.GetNamespace(), w.GetName(), orNone(addr), orNone(w.GetNode()),
			waypointName(w.GetWaypoint()), protocol(w.GetTunnelProtocol()),
		})
	}
	return t
}

func serviceTable(d *dump, f dumpFilter) table {
	// Endpoints count every workload, not only those the filter shows.
	healthy, total := map[string]int{}, map[string]int{}
	for _, r := range d.Workloads {
		for key := range r.m.GetServices() {
			total[key]++
			if r.m.GetStatus() == workload.WorkloadStatus_HEALTHY {
				healthy[key]++
			}
		}
	}
	t := table{header: []string{"NAMESPACE", "SERVICE-NAME", "SERVICE-VIP", "WAYPOINT", "ENDPOINTS"}}
	for _, r := range d.Services {
		s := r.m
		if !f.namespaced(s.GetNamespace()) {
			continue
		}
		var vips []string
		for _, a := range s.GetAddresses() {
			vips = append(vips, ip(a.GetAddress()))
		}
		key := s.GetNamespace() + "/" + s.GetHostname()
		t.rows = append(t.rows, []string{
			s.GetNamespace(), s.GetName(), orNone(strings.Join(vips, ",")),
			waypointName(s.GetWaypoint()), fmt.Sprintf("%d/%d", healthy[key], total[key]),
		})
	}
	return t
}

func policyTable(d *dump, f dumpFilter) table {
	t := table{header: []string{"NAMESPACE", "POLICY-NAME", "ACTION", "SCOPE"}}
	for _, r := range d.Policies {
		p := r.m
		if !f.namespaced(p.GetNamespace()) {
			continue
		}
		action := "Allow"
		if p.GetAction() == security.Action_DENY {
			action = "Deny"
		}
		if p.GetDryRun() {
			action += "(dry-run)"
		}
		scope := map[security.Scope]string{
			security.Scope_GLOBAL:            "Global",
			security.Scope_NAMESPACE:         "Namespace",
			security.Scope_WORKLOAD_SELECTOR: "WorkloadSelector",
		}[p.GetScope()]
		t.rows = append(t.rows, []string{p.GetNamespace(), p.GetName(), action, cmp.Or(scope, p.GetScope().String())})
	}
	return t
}

// certificateTable shows each identity's leaf certificate: STATUS is
// Error when the last fetch failed (an older certificate may still be
// served: VALID-CERT says), Initializing before the first one arrived.
func certificateTable(d *dump, now time.Time) table {
	t := table{header: []string{"CERTIFICATE-NAME", "TYPE", "STATUS", "VALID-CERT", "NOT-AFTER", "NEXT-ROTATION"}}
	for _, c := range d.Certificates {
		status := "Available"
		switch {
		case c.LastError != "":
			status = "Error"
		case c.NotAfter.IsZero():
			status = "Initializing"
		}
		valid := !c.NotAfter.IsZero() && !now.Before(c.NotBefore) && now.Before(c.NotAfter)
		t.rows = append(t.rows, []string{c.Identity, "Leaf", status, strconv.FormatBool(valid), timestamp(c.NotAfter), timestamp(c.NextRotation)})
	}
	return t
}

func timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// ip shows an address sent as bytes (4 or 16).
func ip(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("invalid(%x)", b)
	}
	return a.Unmap().String()
}

func ips(bs [][]byte) string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, ip(b))
	}
	return strings.Join(out, ",")
}

// waypointName shows a waypoint by name when it is a service of its
// namespace ("waypoint" for waypoint.ns.svc.cluster.local), as istioctl
// does, else by hostname or address.
func waypointName(g *workload.GatewayAddress) string {
	switch {
	case g == nil:
		return "None"
	case g.GetHostname() != nil:
		h := g.GetHostname()
		name, rest, _ := strings.Cut(h.GetHostname(), ".")
		if strings.HasPrefix(rest, h.GetNamespace()+".svc.") {
			return name
		}
		return h.GetHostname()
	case g.GetAddress() != nil:
		return ip(g.GetAddress().GetAddress())
	}
	return "None"
}

// protocol names the tunnel as istioctl does: TCP for none.
func protocol(p workload.TunnelProtocol) string {
	if p == workload.TunnelProtocol_NONE {
		return "TCP"
	}
	return p.String()
}
