package fault_test

import (
	"net/http"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/route"
)

func compile(t *testing.T, y string) *fault.Fault {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &faultv3.HTTPFault{}
	if err := protojson.Unmarshal(js, cfg); err != nil {
		t.Fatal(err)
	}
	f, err := config.CompileFault("f", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPercentageBoundaries: the split falls exactly where Envoy's does for
// the same random number: enabled iff rnd % denominator < numerator.
func TestPercentageBoundaries(t *testing.T) {
	cases := []struct {
		pct     string
		rnd     uint64
		enabled bool
	}{
		{"{numerator: 25}", 24, true}, // HUNDRED is the default denominator
		{"{numerator: 25}", 25, false},
		{"{numerator: 25}", 99, false},
		{"{numerator: 25}", 124, true}, // modulo the denominator
		{"{numerator: 0}", 0, false},
		{"{numerator: 100}", 99, true},
		{"{numerator: 150}", 1<<64 - 1, true}, // above the denominator: always
		{"{numerator: 1, denominator: TEN_THOUSAND}", 0, true},
		{"{numerator: 1, denominator: TEN_THOUSAND}", 1, false},
		{"{numerator: 1, denominator: TEN_THOUSAND}", 10_000, true},
		{"{numerator: 500000, denominator: MILLION}", 499_999, true},
		{"{numerator: 500000, denominator: MILLION}", 500_000, false},
		{"{numerator: 500000, denominator: MILLION}", 1_499_999, true},
	}
	for _, c := range cases {
		f := compile(t, "delay: {fixedDelay: 2s, percentage: "+c.pct+"}\nabort: {httpStatus: 503, percentage: "+c.pct+"}\n")
		d, a := fault.Decide(f, c.rnd, c.rnd)
		if (d == 2*time.Second) != c.enabled || (a != nil) != c.enabled {
			t.Errorf("%s rnd=%d: delay %v abort %+v, want enabled=%v", c.pct, c.rnd, d, a, c.enabled)
		}
	}
}

// TestDecideIndependent: delay and abort each use their own random number.
func TestDecideIndependent(t *testing.T) {
	f := compile(t, "delay: {fixedDelay: 5s, percentage: {numerator: 50}}\nabort: {httpStatus: 418, percentage: {numerator: 50}}\n")
	if d, a := fault.Decide(f, 10, 60); d != 5*time.Second || a != nil {
		t.Errorf("got %v %+v, want delay only", d, a)
	}
	if d, a := fault.Decide(f, 60, 10); d != 0 || a == nil || a.HTTPStatus != 418 || a.GRPC {
		t.Errorf("got %v %+v, want abort 418 only", d, a)
	}
}

// TestUnsetPercentage: Envoy's zero FractionalPercent (0/100) never fires.
func TestUnsetPercentage(t *testing.T) {
	f := compile(t, "delay: {fixedDelay: 1s}\nabort: {httpStatus: 500}\n")
	if d, a := fault.Decide(f, 0, 0); d != 0 || a != nil {
		t.Errorf("got %v %+v, want no fault", d, a)
	}
}

func TestGRPCAbort(t *testing.T) {
	f := compile(t, "abort: {grpcStatus: 14, percentage: {numerator: 100}}\n")
	_, a := fault.Decide(f, 0, 7)
	if a == nil || !a.GRPC || a.GRPCStatus != 14 || a.HTTPStatus != 200 {
		t.Fatalf("got %+v, want gRPC UNAVAILABLE (14) over HTTP 200", a)
	}
	// grpc_status 0 (OK) is a valid abort too: it is not "unset".
	f = compile(t, "abort: {grpcStatus: 0, percentage: {numerator: 100}}\n")
	if _, a = fault.Decide(f, 0, 0); a == nil || !a.GRPC || a.GRPCStatus != 0 {
		t.Fatalf("got %+v, want gRPC status 0", a)
	}
	if fault.AbortBody != "fault filter abort" || fault.FlagAbort != "FI" || fault.FlagDelay != "DI" {
		t.Fatal("local reply strings differ from Envoy's")
	}
}

func TestHeadersAndMaxActive(t *testing.T) {
	f := compile(t, "headers: [{name: x-fault, stringMatch: {exact: 'yes'}}]\nmaxActiveFaults: 3\nabort: {httpStatus: 503, percentage: {numerator: 100}}\n")
	if f.MaxActiveFaults != 3 {
		t.Errorf("max_active_faults %d, want 3", f.MaxActiveFaults)
	}
	on := &route.Request{Method: "GET", Path: "/", Header: http.Header{"X-Fault": {"yes"}}}
	off := &route.Request{Method: "GET", Path: "/", Header: http.Header{"X-Fault": {"no"}}}
	if !f.Applies(on) || f.Applies(off) || f.Applies(&route.Request{}) {
		t.Errorf("Applies: want only the request with x-fault: yes")
	}
	var none *fault.Fault
	if none.Applies(on) {
		t.Errorf("a nil fault applies")
	}
}

// TestPerRoute: Istio attaches a route's fault in typed_per_filter_config.
func TestPerRoute(t *testing.T) {
	a, err := anypb.New(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
		ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 500},
	}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.CompileFaultPerRoute(`typed_per_filter_config["envoy.filters.http.fault"]`, a)
	if err != nil {
		t.Fatal(err)
	}
	if f.Abort == nil || f.Abort.HTTPStatus != 500 || f.Delay != nil {
		t.Fatalf("got %+v", f)
	}
}
