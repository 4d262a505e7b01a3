package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fixture is a Telemetry on its own registry with a JSON log in a buffer.
type fixture struct {
	t   *testing.T
	reg *prometheus.Registry
	tel *Telemetry
	log bytes.Buffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, reg: prometheus.NewRegistry()}
	h := slog.NewJSONHandler(&f.log, &slog.HandlerOptions{Level: slog.LevelInfo})
	tel, err := New(f.reg, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	f.tel = tel
	return f
}

// series returns the label sets and values of every series of a metric.
func (f *fixture) series(name string) []sample {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	var out []sample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if mf.GetType() != dto.MetricType_COUNTER {
			f.t.Fatalf("%s is a %v, want a counter", name, mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{}, value: m.GetCounter().GetValue()}
			for _, lp := range m.GetLabel() {
				s.labels[lp.GetName()] = lp.GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

type sample struct {
	labels map[string]string
	value  float64
}

// only asserts that metric name has exactly one series and returns it.
func (f *fixture) only(name string) sample {
	f.t.Helper()
	ss := f.series(name)
	if len(ss) != 1 {
		f.t.Fatalf("%s: %d series, want 1: %v", name, len(ss), ss)
	}
	return ss[0]
}

// lines decodes the JSON log lines written so far.
func (f *fixture) lines() []map[string]any {
	f.t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(f.log.String()), "\n") {
		if l == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			f.t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func (f *fixture) onlyLine() map[string]any {
	f.t.Helper()
	ls := f.lines()
	if len(ls) != 1 {
		f.t.Fatalf("%d log lines, want 1:\n%s", len(ls), f.log.String())
	}
	return ls[0]
}

func checkLabels(t *testing.T, got, want map[string]string) {
	t.Helper()
	if len(got) != len(labelNames) {
		t.Errorf("%d labels, want Istio's %d: %v", len(got), len(labelNames), got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("label %s = %q, want %q", k, got[k], v)
		}
	}
}

// checkLine compares a decoded log line with want; a nil value in want
// means the key must be absent.
func checkLine(t *testing.T, got map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		switch {
		case v == nil && ok:
			t.Errorf("log key %s = %v, want absent", k, g)
		case v != nil && !ok:
			t.Errorf("log key %s missing, want %v", k, v)
		case v != nil && g != v:
			t.Errorf("log key %s = %v (%T), want %v (%T)", k, g, g, v, v)
		}
	}
	if d, _ := got[KeyDuration].(string); !regexp.MustCompile(`^\d+ms$`).MatchString(d) {
		t.Errorf("log key %s = %q, want <n>ms", KeyDuration, got[KeyDuration])
	}
}

var (
	productpage = Peer{
		Addr:              netip.MustParseAddrPort("10.0.1.5:43210"),
		Pod:               "productpage-v1-7d9f8-abcde",
		Workload:          "productpage-v1",
		Namespace:         "bookinfo",
		Identity:          "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
		CanonicalName:     "productpage",
		CanonicalRevision: "v1",
		Cluster:           "Kubernetes",
	}
	reviews = Peer{
		Addr:              netip.MustParseAddrPort("10.0.2.7:15008"),
		Pod:               "reviews-v2-5b6c-fghij",
		Workload:          "reviews-v2",
		Namespace:         "bookinfo",
		Identity:          "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
		CanonicalName:     "reviews",
		CanonicalRevision: "v2",
		Cluster:           "Kubernetes",
		Service:           "reviews.bookinfo.svc.cluster.local",
		ServiceName:       "reviews",
		ServiceNamespace:  "bookinfo",
	}
)

func TestOutboundMutualTLS(t *testing.T) {
	f := newFixture(t)
	c := f.tel.Open(ConnInfo{
		Direction:   Outbound,
		Src:         productpage,
		Dst:         reviews,
		HBONETarget: netip.MustParseAddrPort("10.0.2.7:9080"),
		Secure:      true,
	})
	c.AddSent(100)    // counted while flowing...
	c.AddReceived(50) //
	c.Close(Result{Sent: 300, Received: 1000})

	want := map[string]string{
		"reporter":                       "source",
		"source_workload":                "productpage-v1",
		"source_canonical_service":       "productpage",
		"source_canonical_revision":      "v1",
		"source_workload_namespace":      "bookinfo",
		"source_principal":               "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
		"source_app":                     "productpage",
		"source_version":                 "v1",
		"source_cluster":                 "Kubernetes",
		"destination_service":            "reviews.bookinfo.svc.cluster.local",
		"destination_service_namespace":  "bookinfo",
		"destination_service_name":       "reviews",
		"destination_workload":           "reviews-v2",
		"destination_canonical_service":  "reviews",
		"destination_canonical_revision": "v2",
		"destination_workload_namespace": "bookinfo",
		"destination_principal":          "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
		"destination_app":                "reviews",
		"destination_version":            "v2",
		"destination_cluster":            "Kubernetes",
		"request_protocol":               "tcp",
		"response_flags":                 "-",
		"connection_security_policy":     "mutual_tls",
	}
	for name, value := range map[string]float64{
		MetricOpened: 1,
		MetricClosed: 1,
		// ...and the rest at close, not twice. Istio's names are from the
		// downstream's side: the client's 300 bytes were "received".
		MetricReceived: 300,
		MetricSent:     1000,
	} {
		s := f.only(name)
		checkLabels(t, s.labels, want)
		if s.value != value {
			t.Errorf("%s = %v, want %v", name, s.value, value)
		}
	}
	if ss := f.series(MetricFailed); len(ss) != 0 {
		t.Errorf("%s has series %v, want none", MetricFailed, ss)
	}

	line := f.onlyLine()
	checkLine(t, line, map[string]any{
		"level":         "INFO",
		"msg":           "connection complete",
		KeySrcAddr:      "10.0.1.5:43210",
		KeySrcWorkload:  "productpage-v1-7d9f8-abcde",
		KeySrcNamespace: "bookinfo",
		KeySrcIdentity:  "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
		KeySrcCluster:   "Kubernetes",
		KeyDstAddr:      "10.0.2.7:15008",
		KeyDstHBONEAddr: "10.0.2.7:9080",
		KeyDstService:   "reviews.bookinfo.svc.cluster.local",
		KeyDstWorkload:  "reviews-v2-5b6c-fghij",
		KeyDstNamespace: "bookinfo",
		KeyDstIdentity:  "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
		KeyDirection:    "outbound",
		// The local workload is the client: it sent 300.
		KeyBytesSent:     float64(300),
		KeyBytesRecv:     float64(1000),
		KeyError:         nil,
		KeyReason:        nil,
		KeyResponseFlags: nil,
	})
}

func TestInboundPlaintext(t *testing.T) {
	f := newFixture(t)
	// An inbound passthrough connection from a client outside the mesh:
	// only its address is known.
	src := Peer{Addr: netip.MustParseAddrPort("192.168.9.9:50000")}
	dst := reviews
	dst.Addr = netip.MustParseAddrPort("10.0.2.7:9080")
	dst.Service, dst.ServiceName, dst.ServiceNamespace = "", "", ""
	c := f.tel.Open(ConnInfo{Direction: Inbound, Src: src, Dst: dst})
	c.Close(Result{Sent: 20, Received: 700})

	want := map[string]string{
		"reporter":                       "destination",
		"source_workload":                "unknown",
		"source_canonical_service":       "unknown",
		"source_canonical_revision":      "unknown",
		"source_workload_namespace":      "unknown",
		"source_principal":               "unknown",
		"source_app":                     "unknown",
		"source_version":                 "unknown",
		"source_cluster":                 "unknown",
		"destination_service":            "unknown",
		"destination_service_namespace":  "unknown",
		"destination_service_name":       "unknown",
		"destination_workload":           "reviews-v2",
		"destination_canonical_service":  "reviews",
		"destination_canonical_revision": "v2",
		"destination_workload_namespace": "bookinfo",
		// Istio reports the identity the destination should have even
		// without mTLS; only the source principal needs a handshake.
		"destination_principal":      "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
		"request_protocol":           "tcp",
		"response_flags":             "-",
		"connection_security_policy": "unknown",
	}
	for name, value := range map[string]float64{MetricOpened: 1, MetricClosed: 1, MetricReceived: 20, MetricSent: 700} {
		s := f.only(name)
		checkLabels(t, s.labels, want)
		if s.value != value {
			t.Errorf("%s = %v, want %v", name, s.value, value)
		}
	}

	checkLine(t, f.onlyLine(), map[string]any{
		"level":         "INFO",
		KeySrcAddr:      "192.168.9.9:50000",
		KeySrcWorkload:  nil,
		KeySrcNamespace: nil,
		KeySrcIdentity:  nil,
		KeyDstAddr:      "10.0.2.7:9080",
		KeyDstHBONEAddr: nil,
		KeyDstService:   nil,
		KeyDstWorkload:  "reviews-v2-5b6c-fghij",
		KeyDstIdentity:  nil, // not proven without mTLS
		KeyDirection:    "inbound",
		// The local workload is the server: it sent the 700 back.
		KeyBytesSent: float64(700),
		KeyBytesRecv: float64(20),
	})
}

func TestDenied(t *testing.T) {
	f := newFixture(t)
	dst := reviews
	dst.Addr = netip.MustParseAddrPort("10.0.2.7:9080")
	ci := ConnInfo{
		Direction:   Inbound,
		Src:         productpage,
		Dst:         dst,
		HBONETarget: netip.MustParseAddrPort("10.0.2.7:9080"),
		Secure:      true,
	}
	errDenied := errors.New("connection denied by authorization policy")
	f.tel.Open(ci).Close(Result{
		Err:    errDenied,
		Reason: "denied by DENY policy bookinfo/deny-productpage",
		Flags:  FlagDenied,
		Policy: "bookinfo/deny-productpage",
	})
	// A second, allowed connection of the same pair shares the opened
	// series but not the closed one.
	f.tel.Open(ci).Close(Result{Sent: 1, Received: 1, Policy: "bookinfo/allow-productpage"})

	if s := f.only(MetricOpened); s.value != 2 || s.labels["response_flags"] != "-" {
		t.Errorf("opened = %v %v, want 2 under response_flags=-", s.value, s.labels)
	}
	closed := map[string]float64{}
	for _, s := range f.series(MetricClosed) {
		closed[s.labels["response_flags"]] = s.value
		checkLabels(t, s.labels, map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls"})
	}
	if want := map[string]float64{"-": 1, "DENY": 1}; !maps.Equal(closed, want) {
		t.Errorf("closed by response_flags = %v, want %v", closed, want)
	}
	if s := f.only(MetricFailed); s.value != 1 || s.labels["response_flags"] != "DENY" {
		t.Errorf("failed = %v %v, want 1 under response_flags=DENY", s.value, s.labels)
	}
	// Bytes are only ever counted under "-".
	for _, name := range []string{MetricSent, MetricReceived} {
		if s := f.only(name); s.labels["response_flags"] != "-" {
			t.Errorf("%s under response_flags=%s, want -", name, s.labels["response_flags"])
		}
	}

	lines := f.lines()
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2", len(lines))
	}
	checkLine(t, lines[0], map[string]any{
		"level":          "WARN",
		"msg":            "connection complete",
		KeyDirection:     "inbound",
		KeySrcIdentity:   "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
		KeyError:         "connection denied by authorization policy",
		KeyReason:        "denied by DENY policy bookinfo/deny-productpage",
		KeyResponseFlags: "DENY",
		KeyPolicy:        "bookinfo/deny-productpage",
		KeyBytesSent:     float64(0),
		KeyBytesRecv:     float64(0),
	})
	// The policy that allowed a connection is named as the one that
	// denied one is.
	checkLine(t, lines[1], map[string]any{"level": "INFO", KeyError: nil, KeyResponseFlags: nil, KeyPolicy: "bookinfo/allow-productpage", KeyPeerAuthentication: nil})
}

// A STRICT refusal names the PeerAuthentication, not the policy it became.
func TestDeniedByPeerAuthentication(t *testing.T) {
	f := newFixture(t)
	f.tel.Open(ConnInfo{Direction: Inbound, Src: productpage, Dst: reviews}).Close(Result{
		Err: errors.New("denied"), Flags: FlagDenied, PeerAuthentication: "bookinfo/strict",
		Reason: "mutual TLS required by PeerAuthentication bookinfo/strict",
	})
	checkLine(t, f.onlyLine(), map[string]any{KeyPeerAuthentication: "bookinfo/strict", KeyPolicy: nil, KeyResponseFlags: "DENY"})
}

func TestErrorWithoutFlagIsConnectFailure(t *testing.T) {
	f := newFixture(t)
	f.tel.Open(ConnInfo{Direction: Outbound, Src: productpage, Dst: reviews}).
		Close(Result{Err: errors.New("dial tcp 10.0.2.7:9080: connection refused")})

	if s := f.only(MetricFailed); s.labels["response_flags"] != FlagConnectFailure {
		t.Errorf("failed under response_flags=%s, want %s", s.labels["response_flags"], FlagConnectFailure)
	}
	checkLine(t, f.onlyLine(), map[string]any{
		"level":          "WARN",
		KeyResponseFlags: "CONNECT",
		KeyError:         "dial tcp 10.0.2.7:9080: connection refused",
		KeyReason:        nil,
		KeySrcIdentity:   nil, // plaintext: identities unproven
		KeyDstIdentity:   nil,
	})
}

func TestCloseTwiceCountsOnce(t *testing.T) {
	f := newFixture(t)
	c := f.tel.Open(ConnInfo{Direction: Outbound, Src: productpage, Dst: reviews})
	c.Close(Result{Sent: 5})
	c.Close(Result{Sent: 5, Err: errors.New("late")})
	if s := f.only(MetricClosed); s.value != 1 {
		t.Errorf("closed = %v, want 1", s.value)
	}
	if s := f.only(MetricReceived); s.value != 5 {
		t.Errorf("received bytes = %v, want 5", s.value)
	}
	f.onlyLine()
}

func TestOpenLogIsDebug(t *testing.T) {
	reg := prometheus.NewRegistry()
	var buf bytes.Buffer
	tel, err := New(reg, slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	tel.Open(ConnInfo{Direction: Outbound, Src: productpage, Dst: reviews})
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	if line["level"] != "DEBUG" || line["msg"] != "connection opened" || line[KeyDstAddr] != "10.0.2.7:15008" {
		t.Errorf("open line = %v", line)
	}
	if _, ok := line[KeyBytesSent]; ok {
		t.Errorf("open line has %s", KeyBytesSent)
	}
}

func TestNewRejectsDoubleRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	if _, err := New(reg, log); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg, log); err == nil {
		t.Error("second New on the same registry succeeded")
	}
	if _, err := New(nil, log); err == nil {
		t.Error("New with nil registerer succeeded")
	}
	if _, err := New(reg, nil); err == nil {
		t.Error("New with nil logger succeeded")
	}
}

func TestHBONELimitCounted(t *testing.T) {
	f := newFixture(t)
	in := f.tel.HBONELimit(Inbound)
	in("streams_per_peer")
	in("streams_per_peer")
	f.tel.HBONELimit(Outbound)("control_frames")
	got := map[string]float64{}
	for _, s := range f.series(MetricHBONELimit) {
		got[s.labels["direction"]+"/"+s.labels["limit"]] = s.value
	}
	want := map[string]float64{"inbound/streams_per_peer": 2, "outbound/control_frames": 1}
	if !maps.Equal(got, want) {
		t.Errorf("%s = %v, want %v", MetricHBONELimit, got, want)
	}
}
