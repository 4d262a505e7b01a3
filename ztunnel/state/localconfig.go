package state

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
)

// LocalConfig is the --local-config file: the same messages the control
// plane sends, in YAML (protojson field names, either spelling). Where the
// wire has address bytes the file takes text: "10.0.0.1" for an address,
// "10.0.0.0/24" for a policy CIDR, and a bare IP for a NetworkAddress.
//
//	workloads: [ {uid, name, namespace, addresses: [10.0.0.1], tunnelProtocol: HBONE, ...} ]
//	services:  [ {name, namespace, hostname, addresses: [10.96.0.1], ports: [{servicePort: 80, targetPort: 8080}]} ]
//	policies:  [ {name, namespace, scope, action, rules: [...]} ]
type LocalConfig struct {
	Workloads []json.RawMessage `json:"workloads"`
	Services  []json.RawMessage `json:"services"`
	Policies  []json.RawMessage `json:"policies"`
}

// LoadFile reads a local config file as one whole Update.
func LoadFile(path string) (Update, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Update{}, err
	}
	u, err := ParseLocalConfig(data)
	if err != nil {
		return Update{}, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// ParseLocalConfig decodes a local config document. Errors name the list,
// the index and the field. A policy that does not decode does not fail the
// document: it goes into Update.BadPolicies under the name that can be read
// of it ("policies[i]" if none), so that the store enforces a deny-all in
// its place; so does a policy whose name appears twice.
func ParseLocalConfig(data []byte) (Update, error) {
	lc, err := decodeLocalConfig(data)
	if err != nil {
		return Update{}, fmt.Errorf("decode: %w", err)
	}
	u := Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
	for i, raw := range lc.Workloads {
		w := &workload.Workload{}
		if err := decodeFriendly(raw, w); err != nil {
			return Update{}, fmt.Errorf("workloads[%d]: %w", i, err)
		}
		if _, dup := u.Addresses[w.Uid]; dup {
			return Update{}, fmt.Errorf("workloads[%d]: uid %q appears twice", i, w.Uid)
		}
		u.Addresses[w.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}
	for i, raw := range lc.Services {
		s := &workload.Service{}
		if err := decodeFriendly(raw, s); err != nil {
			return Update{}, fmt.Errorf("services[%d]: %w", i, err)
		}
		key := s.Namespace + "/" + s.Hostname
		if _, dup := u.Addresses[key]; dup {
			return Update{}, fmt.Errorf("services[%d]: %q appears twice", i, key)
		}
		u.Addresses[key] = &workload.Address{Type: &workload.Address_Service{Service: s}}
	}
	for i, raw := range lc.Policies {
		p := &security.Authorization{}
		if err := decodeFriendly(raw, p); err != nil {
			read := readPolicyLoosely(raw)
			key := fmt.Sprintf("policies[%d]", i)
			if read != nil && read.Namespace != "" && read.Name != "" {
				key = read.Namespace + "/" + read.Name
			}
			u.badPolicy(key, BadPolicy{Read: read, Err: fmt.Errorf("policies[%d]: %w", i, err)})
			continue
		}
		key := p.Namespace + "/" + p.Name
		_, dup := u.Policies[key]
		if _, bad := u.BadPolicies[key]; dup || bad {
			delete(u.Policies, key)
			u.badPolicy(key, BadPolicy{Read: p, Err: fmt.Errorf("policies[%d]: %q appears twice", i, key)})
			continue
		}
		u.Policies[key] = p
	}
	return u, nil
}

func (u *Update) badPolicy(key string, b BadPolicy) {
	if u.BadPolicies == nil {
		u.BadPolicies = map[string]BadPolicy{}
	}
	if prev, ok := u.BadPolicies[key]; ok {
		b.Err = errors.Join(prev.Err, b.Err)
	}
	u.BadPolicies[key] = b
}

// readPolicyLoosely reads what it can of a policy that does not decode:
// its name, namespace, scope and dry-run flag, each only if it has the
// right type. What it cannot read stays empty, which authz.Rejected reads
// as the widest scope.
func readPolicyLoosely(raw json.RawMessage) *security.Authorization {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	a := &security.Authorization{}
	a.Name, _ = m["name"].(string)
	a.Namespace, _ = m["namespace"].(string)
	if s, ok := m["scope"].(string); ok {
		if v, ok := security.Scope_value[s]; ok {
			a.Scope = security.Scope(v)
		}
	}
	for _, k := range []string{"dryRun", "dry_run"} {
		if b, ok := m[k].(bool); ok {
			a.DryRun = b
		}
	}
	return a
}

// decodeLocalConfig turns the YAML document into JSON lists, refusing
// unknown top-level keys. (YAML is decoded generically and re-encoded as
// JSON so protojson, with its field names and checks, does the rest.)
func decodeLocalConfig(data []byte) (LocalConfig, error) {
	var lc LocalConfig
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return lc, err
	}
	for key, v := range doc {
		var dst *[]json.RawMessage
		switch key {
		case "workloads":
			dst = &lc.Workloads
		case "services":
			dst = &lc.Services
		case "policies":
			dst = &lc.Policies
		default:
			return lc, fmt.Errorf("unknown field %q (want workloads, services, policies)", key)
		}
		if v == nil {
			continue
		}
		list, ok := v.([]any)
		if !ok {
			return lc, fmt.Errorf("%s: a list is needed", key)
		}
		for i, item := range list {
			raw, err := json.Marshal(item)
			if err != nil {
				return lc, fmt.Errorf("%s[%d]: %w", key, i, err)
			}
			*dst = append(*dst, raw)
		}
	}
	return lc, nil
}

func decodeFriendly(raw json.RawMessage, m proto.Message) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	v, err := friendly(v, m.ProtoReflect().Descriptor(), "")
	if err != nil {
		return err
	}
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(out, m)
}

// friendly rewrites the text forms of addresses into protojson's base64,
// walking the JSON alongside the message descriptor.
func friendly(v any, md protoreflect.MessageDescriptor, path string) (any, error) {
	switch md.FullName() {
	case "istio.security.Address":
		if s, ok := v.(string); ok {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return map[string]any{"address": b64(p.Addr()), "length": p.Bits()}, nil
		}
	case "istio.workload.NetworkAddress":
		if s, ok := v.(string); ok {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return map[string]any{"address": b64(a)}, nil
		}
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return v, nil // protojson reports the type mismatch
	}
	for k, fv := range obj {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil {
			continue // protojson names the unknown field
		}
		fpath := joinPath(path, string(fd.Name()))
		var err error
		if obj[k], err = friendlyField(fv, fd, fpath); err != nil {
			return nil, err
		}
	}
	return obj, nil
}

func friendlyField(v any, fd protoreflect.FieldDescriptor, path string) (any, error) {
	if fd.IsMap() {
		obj, ok := v.(map[string]any)
		if !ok || fd.MapValue().Kind() != protoreflect.MessageKind {
			return v, nil
		}
		for k, ev := range obj {
			var err error
			if obj[k], err = friendly(ev, fd.MapValue().Message(), fmt.Sprintf("%s[%q]", path, k)); err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
	one := func(ev any, p string) (any, error) {
		switch fd.Kind() {
		case protoreflect.MessageKind:
			return friendly(ev, fd.Message(), p)
		case protoreflect.BytesKind:
			if s, ok := ev.(string); ok {
				if a, err := netip.ParseAddr(s); err == nil {
					return b64(a), nil
				}
			}
		}
		return ev, nil
	}
	if fd.IsList() {
		list, ok := v.([]any)
		if !ok {
			return v, nil
		}
		for i, ev := range list {
			var err error
			if list[i], err = one(ev, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return nil, err
			}
		}
		return list, nil
	}
	return one(v, path)
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func b64(a netip.Addr) string { return base64.StdEncoding.EncodeToString(a.AsSlice()) }

func joinPath(base, name string) string {
	if base == "" {
		return name
	}
	return base + "." + name
}
