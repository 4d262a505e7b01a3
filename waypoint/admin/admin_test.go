package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/internal/httpserve"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/waypoint/config"
)

const chain = "inbound-vip|9000|tcp|a.ns.svc.cluster.local"

func snapshot(t *testing.T) *config.Snapshot {
	s, err := config.Build(config.Resources{
		Version: "abc",
		Listeners: []*listenerv3.Listener{testutil.ProtoYAML(t, `name: main_internal
filterChains:
- name: "`+chain+`"
  filterChainMatch: {destinationPort: 9000, prefixRanges: [{addressPrefix: 10.96.0.1, prefixLen: 32}]}
  filters: [{name: envoy.filters.network.tcp_proxy, typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: "`+chain+`", cluster: "`+chain+`"}}]
`, &listenerv3.Listener{})},
		Routes:      []*routev3.RouteConfiguration{testutil.ProtoYAML(t, "name: r\nvirtualHosts: [{name: 'a:80', domains: ['*']}]\n", &routev3.RouteConfiguration{})},
		Clusters:    []*clusterv3.Cluster{testutil.ProtoYAML(t, "name: \""+chain+"\"\ntype: EDS\nedsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}}\n", &clusterv3.Cluster{})},
		Assignments: []*endpointv3.ClusterLoadAssignment{testutil.ProtoYAML(t, "clusterName: \""+chain+"\"\n", &endpointv3.ClusterLoadAssignment{})},
		Versions:    map[string]map[string]string{config.TypeListener: {"main_internal": "7"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := &http.Server{Handler: h}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConfigDumpIsEnvoys: /config_dump decodes as Envoy's ConfigDump, its
// four sections in Envoy's order, each resource with its version, and a
// table of listeners can be printed from it as istioctl does.
func TestConfigDumpIsEnvoys(t *testing.T) {
	var cur atomic.Pointer[config.Snapshot]
	h, err := NewAdmin(Options{Snapshot: cur.Load, Ready: func() bool { return cur.Load() != nil }})
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, h, "/config_dump")
	if code != 200 {
		t.Fatalf("empty dump: %d %s", code, body)
	}
	var empty adminv3.ConfigDump
	if err := protojson.Unmarshal([]byte(body), &empty); err != nil || len(empty.Configs) != 4 {
		t.Fatalf("dump before the first snapshot: %v %s", err, body)
	}
	if code, _ := get(t, h, "/ready"); code != 503 {
		t.Errorf("/ready before the first snapshot: %d, want 503", code)
	}

	cur.Store(snapshot(t))
	if code, _ := get(t, h, "/ready"); code != 200 {
		t.Errorf("/ready with a snapshot: %d, want 200", code)
	}
	code, body = get(t, h, "/config_dump")
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var d adminv3.ConfigDump
	if err := protojson.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range d.Configs {
		types = append(types, c.GetTypeUrl())
	}
	want := "type.googleapis.com/envoy.admin.v3.ListenersConfigDump type.googleapis.com/envoy.admin.v3.ClustersConfigDump " +
		"type.googleapis.com/envoy.admin.v3.EndpointsConfigDump type.googleapis.com/envoy.admin.v3.RoutesConfigDump"
	if strings.Join(types, " ") != want {
		t.Fatalf("sections %v", types)
	}
	ls := &adminv3.ListenersConfigDump{}
	if err := d.Configs[0].UnmarshalTo(ls); err != nil {
		t.Fatal(err)
	}
	if len(ls.DynamicListeners) != 1 || ls.DynamicListeners[0].GetName() != "main_internal" || ls.DynamicListeners[0].GetActiveState().GetVersionInfo() != "7" {
		t.Fatalf("listeners %v", ls)
	}
	// What `proxy-config listeners` prints: chain name, port, cluster.
	l := &listenerv3.Listener{}
	if err := ls.DynamicListeners[0].GetActiveState().GetListener().UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	fc := l.GetFilterChains()[0]
	tp := &tcpproxyv3.TcpProxy{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	if fc.GetName() != chain || fc.GetFilterChainMatch().GetDestinationPort().GetValue() != 9000 || tp.GetCluster() != chain {
		t.Errorf("listener row: %s %d %s", fc.GetName(), fc.GetFilterChainMatch().GetDestinationPort().GetValue(), tp.GetCluster())
	}
	cs, es, rs := &adminv3.ClustersConfigDump{}, &adminv3.EndpointsConfigDump{}, &adminv3.RoutesConfigDump{}
	for i, m := range []proto.Message{cs, es, rs} {
		if err := d.Configs[i+1].UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
	}
	c := &clusterv3.Cluster{}
	if len(cs.DynamicActiveClusters) != 1 || cs.DynamicActiveClusters[0].GetCluster().UnmarshalTo(c) != nil || c.GetName() != chain ||
		len(es.DynamicEndpointConfigs) != 1 || len(rs.DynamicRouteConfigs) != 1 || cs.GetVersionInfo() != "abc" {
		t.Errorf("clusters %v endpoints %v routes %v", cs, es, rs)
	}
}

// TestReadinessAndMetricsServers: 15021's /healthz/ready follows ready();
// 15020's /stats/prometheus serves the registry; Serve stops on cancel.
func TestReadinessAndMetricsServers(t *testing.T) {
	var ready atomic.Bool
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_requests_total", Help: "h"})
	reg.MustRegister(c)
	c.Inc()

	ctx, cancel := context.WithCancel(context.Background())
	rl, _ := net.Listen("tcp", "127.0.0.1:0")
	ml, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 2)
	go func() { done <- httpserve.Serve(ctx, rl, NewReadiness(ready.Load)) }()
	go func() { done <- httpserve.Serve(ctx, ml, NewMetrics(reg)) }()
	status := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := status("http://" + rl.Addr().String() + "/healthz/ready"); code != 503 {
		t.Errorf("not ready: %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := status("http://" + rl.Addr().String() + "/healthz/ready"); code != 200 {
		t.Errorf("ready: %d, want 200", code)
	}
	if code, body := status("http://" + ml.Addr().String() + "/stats/prometheus"); code != 200 || !strings.Contains(body, "istio_requests_total 1\n") {
		t.Errorf("metrics: %d %s", code, body)
	}
	cancel()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
	}
}
