package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	// Filter configs a waypoint's listeners carry, so that their Any
	// fields decode; any other type decodes as empty (see lenientTypes).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
)

type routeConfig = *routev3.RouteConfiguration

// envoyDump is the part of an Envoy /config_dump proxy-config prints:
// active listeners, route configurations, clusters and endpoint
// assignments, static and dynamic alike, in dump order.
type envoyDump struct {
	Listeners []*listenerv3.Listener
	Routes    []routeConfig
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// lenientTypes resolves the types this binary knows and, for any other
// type URL, an empty message: a filter config zmeshctl does not print
// must not make the whole dump unreadable.
type lenientTypes struct{}

func (lenientTypes) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	return protoregistry.GlobalTypes.FindMessageByName(name)
}

func (lenientTypes) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return (&emptypb.Empty{}).ProtoReflect().Type(), nil
}

func (lenientTypes) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(field)
}

func (lenientTypes) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

var dumpJSON = protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: lenientTypes{}}

// decodeEnvoyDump reads Envoy's ConfigDump JSON: {"configs": [...]}, each
// config an Any of a ListenersConfigDump, RoutesConfigDump,
// ClustersConfigDump or EndpointsConfigDump (others are skipped).
func decodeEnvoyDump(data []byte) (*envoyDump, error) {
	var top struct {
		Configs []json.RawMessage `json:"configs"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	d := &envoyDump{}
	for i, raw := range top.Configs {
		var head struct {
			Type string `json:"@type"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, fmt.Errorf("decode config dump: configs[%d]: %w", i, err)
		}
		var err error
		switch head.Type[strings.LastIndexByte(head.Type, '/')+1:] {
		case "envoy.admin.v3.ListenersConfigDump":
			m := &adminv3.ListenersConfigDump{}
			if err = decodeConfig(raw, m); err == nil {
				err = d.addListeners(m)
			}
		case "envoy.admin.v3.RoutesConfigDump":
			m := &adminv3.RoutesConfigDump{}
			if err = decodeConfig(raw, m); err == nil {
				err = d.addRoutes(m)
			}
		case "envoy.admin.v3.ClustersConfigDump":
			m := &adminv3.ClustersConfigDump{}
			if err = decodeConfig(raw, m); err == nil {
				err = d.addClusters(m)
			}
		case "envoy.admin.v3.EndpointsConfigDump":
			m := &adminv3.EndpointsConfigDump{}
			if err = decodeConfig(raw, m); err == nil {
				err = d.addEndpoints(m)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("decode config dump: configs[%d] (%s): %w", i, head.Type, err)
		}
	}
	return d, nil
}

// decodeConfig decodes one entry of "configs" (an Any in JSON form: its
// fields beside "@type") into m.
func decodeConfig(raw json.RawMessage, m proto.Message) error {
	a := &anypb.Any{}
	if err := dumpJSON.Unmarshal(raw, a); err != nil {
		return err
	}
	return anypb.UnmarshalTo(a, m, proto.UnmarshalOptions{Resolver: lenientTypes{}})
}

func unpack[M proto.Message](a *anypb.Any, m M, list *[]M) error {
	if a == nil {
		return nil
	}
	if err := anypb.UnmarshalTo(a, m, proto.UnmarshalOptions{Resolver: lenientTypes{}}); err != nil {
		return err
	}
	*list = append(*list, m)
	return nil
}

func (d *envoyDump) addListeners(m *adminv3.ListenersConfigDump) error {
	for _, s := range m.GetStaticListeners() {
		if err := unpack(s.GetListener(), &listenerv3.Listener{}, &d.Listeners); err != nil {
			return err
		}
	}
	for _, s := range m.GetDynamicListeners() {
		if err := unpack(s.GetActiveState().GetListener(), &listenerv3.Listener{}, &d.Listeners); err != nil {
			return err
		}
	}
	return nil
}

func (d *envoyDump) addRoutes(m *adminv3.RoutesConfigDump) error {
	for _, s := range m.GetStaticRouteConfigs() {
		if err := unpack(s.GetRouteConfig(), &routev3.RouteConfiguration{}, &d.Routes); err != nil {
			return err
		}
	}
	for _, s := range m.GetDynamicRouteConfigs() {
		if err := unpack(s.GetRouteConfig(), &routev3.RouteConfiguration{}, &d.Routes); err != nil {
			return err
		}
	}
	return nil
}

func (d *envoyDump) addClusters(m *adminv3.ClustersConfigDump) error {
	for _, s := range m.GetStaticClusters() {
		if err := unpack(s.GetCluster(), &clusterv3.Cluster{}, &d.Clusters); err != nil {
			return err
		}
	}
	for _, s := range m.GetDynamicActiveClusters() {
		if err := unpack(s.GetCluster(), &clusterv3.Cluster{}, &d.Clusters); err != nil {
			return err
		}
	}
	return nil
}

func (d *envoyDump) addEndpoints(m *adminv3.EndpointsConfigDump) error {
	for _, s := range m.GetStaticEndpointConfigs() {
		if err := unpack(s.GetEndpointConfig(), &endpointv3.ClusterLoadAssignment{}, &d.Endpoints); err != nil {
			return err
		}
	}
	for _, s := range m.GetDynamicEndpointConfigs() {
		if err := unpack(s.GetEndpointConfig(), &endpointv3.ClusterLoadAssignment{}, &d.Endpoints); err != nil {
			return err
		}
	}
	return nil
}

// socketAddress is an Envoy address as host and port ("-" when it has
// none: a pipe or an internal listener).
func socketAddress(a *corev3.Address) (string, string) {
	switch {
	case a.GetSocketAddress() != nil:
		sa := a.GetSocketAddress()
		return sa.GetAddress(), fmt.Sprint(sa.GetPortValue())
	case a.GetPipe() != nil:
		return a.GetPipe().GetPath(), "-"
	case a.GetEnvoyInternalAddress() != nil:
		return "envoy://" + a.GetEnvoyInternalAddress().GetServerListenerName(), "-"
	}
	return "-", "-"
}

// chainDestination says where a filter chain sends what it matches:
// "Route: <name>" (HTTP via RDS), "Inline Route: <name>", "Cluster:
// <name>" (TCP), else the filter's name.
func chainDestination(fc *listenerv3.FilterChain) string {
	var out []string
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(hcm); err != nil {
				out = append(out, f.GetName())
				continue
			}
			if rds := hcm.GetRds(); rds != nil {
				out = append(out, "Route: "+rds.GetRouteConfigName())
			} else {
				out = append(out, "Inline Route: "+hcm.GetRouteConfig().GetName())
			}
		case tc.MessageIs(&tcpproxyv3.TcpProxy{}):
			tp := &tcpproxyv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil || tp.GetCluster() == "" {
				out = append(out, f.GetName())
				continue
			}
			out = append(out, "Cluster: "+tp.GetCluster())
		default:
			out = append(out, f.GetName())
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, "; ")
}

// describeMatch is a route's match in istioctl's words: "/x" exact,
// "/x*" prefix, "regex" for a regex, and "(+N headers, +M query)".
func describeMatch(r *routev3.Route) string {
	m := r.GetMatch()
	var s string
	switch {
	case m.GetPath() != "":
		s = m.GetPath()
	case m.GetPathSeparatedPrefix() != "":
		s = m.GetPathSeparatedPrefix() + "/*"
	case m.GetSafeRegex() != nil:
		s = "regex " + m.GetSafeRegex().GetRegex()
	default:
		s = m.GetPrefix() + "*"
	}
	var extra []string
	for _, fs := range m.GetFilterState() {
		extra = append(extra, describeFilterState(fs))
	}
	if n := len(m.GetHeaders()); n > 0 {
		extra = append(extra, fmt.Sprintf("+%d headers", n))
	}
	if n := len(m.GetQueryParameters()); n > 0 {
		extra = append(extra, fmt.Sprintf("+%d query", n))
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// consumerPeer is the peer-principal pattern zmeshd gives a consumer
// route: the clients of one namespace.
var consumerPeer = regexp.MustCompile(`^spiffe://\[\^/\]\+/ns/([a-z0-9-]+)/sa/\[\^/\]\+$`)

// describeFilterState names a filter-state condition of a route: "clients
// of ns X" for a consumer route's peer match, else the key and pattern.
func describeFilterState(fs *matcherv3.FilterStateMatcher) string {
	re := fs.GetStringMatch().GetSafeRegex().GetRegex()
	if fs.GetKey() == "io.istio.peer_principal" {
		if m := consumerPeer.FindStringSubmatch(re); m != nil {
			return "clients of ns " + m[1]
		}
	}
	if re == "" {
		re = fs.GetStringMatch().String()
	}
	return fs.GetKey() + " ~ " + re
}

// istioConfigName reads the object a resource was built from, as istiod
// records it in metadata (filter_metadata.istio.config =
// "/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>"), as
// "<name>.<ns>"; "" when absent.
func istioConfigName(md *corev3.Metadata) string {
	cfg := md.GetFilterMetadata()["istio"].GetFields()["config"]
	path := cfg.GetStringValue()
	if path == "" {
		return ""
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := 0; i+3 < len(parts); i++ {
		if parts[i] == "namespaces" {
			return parts[i+3] + "." + parts[i+1]
		}
	}
	return path
}
