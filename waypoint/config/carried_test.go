package config

import (
	"reflect"
	"testing"
	"time"

	"github.com/zmesh/zmesh/waypoint/filter/fault"
	"github.com/zmesh/zmesh/waypoint/route"
)

// TestCarriedValues checks the values the proxy executes and the golden
// output does not spell out: Envoy's defaults where a field is unset, and
// every field of retries, mirrors and CORS.
func TestCarriedValues(t *testing.T) {
	rc := parse(t, `
name: rc
virtual_hosts:
- name: vh
  domains: [svc]
  include_request_attempt_count: true
  routes:
  - name: defaults
    match: {prefix: /d}
    route: {cluster: c, retry_policy: {}}
  - name: full
    match: {prefix: /}
    decorator: {operation: op}
    route:
      cluster: c
      timeout: 0s
      retry_policy:
        retry_on: "5xx, reset"
        num_retries: 0
        per_try_timeout: 0.5s
        retriable_status_codes: [502, 503]
        retry_back_off: {base_interval: 0.2s, max_interval: 1s}
        retry_host_predicate:
        - name: envoy.retry_host_predicates.previous_hosts
        host_selection_retry_max_attempts: "3"
      request_mirror_policies:
      - cluster: m
        runtime_fraction: {default_value: {numerator: 5, denominator: TEN_THOUSAND}}
        trace_sampled: true
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{suffix: .example.com, ignore_case: true}]
        allow_methods: GET
        allow_headers: x-a
        expose_headers: x-b
        max_age: "60"
        allow_credentials: false
        allow_private_network_access: true
        forward_not_matching_preflights: false
`)
	table, err := CompileRoutes(rc)
	if err != nil {
		t.Fatal(err)
	}
	vh := table.VirtualHosts[0]
	if !vh.IncludeRequestAttemptCount {
		t.Error("include_request_attempt_count lost")
	}
	d := vh.Routes[0].Forward
	if d.Timeout != 15*time.Second {
		t.Errorf("default timeout %v, want Envoy's 15s", d.Timeout)
	}
	wantDefaultRetry := &route.RetryPolicy{NumRetries: 1, BackOffBase: 25 * time.Millisecond, BackOffMax: 250 * time.Millisecond}
	if !reflect.DeepEqual(d.Retry, wantDefaultRetry) {
		t.Errorf("default retry %+v, want %+v", d.Retry, wantDefaultRetry)
	}

	full := vh.Routes[1]
	if full.Operation != "op" || full.Forward.Timeout != 0 {
		t.Errorf("operation %q timeout %v", full.Operation, full.Forward.Timeout)
	}
	wantRetry := &route.RetryPolicy{
		RetryOn: []string{"5xx", "reset"}, NumRetries: 0, PerTryTimeout: 500 * time.Millisecond,
		RetriableStatusCodes: []uint32{502, 503}, BackOffBase: 200 * time.Millisecond, BackOffMax: time.Second,
		RetryOtherHosts: true, HostSelectionMaxAttempts: 3,
	}
	if !reflect.DeepEqual(full.Forward.Retry, wantRetry) {
		t.Errorf("retry %+v, want %+v", full.Forward.Retry, wantRetry)
	}
	sampled := true
	wantMirror := []route.Mirror{{Cluster: "m", PartsPerMillion: 500, TraceSampled: &sampled}}
	if !reflect.DeepEqual(full.Forward.Mirrors, wantMirror) {
		t.Errorf("mirrors %+v, want %+v", full.Forward.Mirrors, wantMirror)
	}
	f, tr := false, true
	wantCORS := &route.CORSPolicy{
		AllowOrigins: []route.StringMatcher{{Kind: route.MatchSuffix, Value: ".example.com", IgnoreCase: true}},
		AllowMethods: "GET", AllowHeaders: "x-a", ExposeHeaders: "x-b", MaxAge: "60",
		AllowCredentials: &f, AllowPrivateNetworkAccess: &tr, ForwardNotMatchingPreflights: &f,
	}
	if !reflect.DeepEqual(full.CORS, wantCORS) {
		t.Errorf("cors %+v, want %+v", full.CORS, wantCORS)
	}
	if vh.Routes[0].CORS != nil {
		t.Error("a route without a policy, in a virtual host without one, has CORS")
	}
}

// A route's fault (typed_per_filter_config of the fault filter, as Istio
// emits a VirtualService's fault) is compiled onto the route; a route
// without one inherits its virtual host's.
func TestCarriedFaultPerRoute(t *testing.T) {
	rc := parse(t, `
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      delay: {fixed_delay: 2s, percentage: {numerator: 100}}
  routes:
  - name: abort
    match: {prefix: /a}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: {http_status: 503, percentage: {numerator: 500000, denominator: MILLION}}
  - name: inherits
    match: {prefix: /}
    route: {cluster: c}
`)
	table, err := CompileRoutes(rc)
	if err != nil {
		t.Fatal(err)
	}
	routes := table.VirtualHosts[0].Routes
	abort, ok := routes[0].Fault.(*fault.Fault)
	if !ok || abort.Abort == nil || abort.Abort.HTTPStatus != 503 || abort.Delay != nil ||
		abort.Abort.Percent != (fault.Percentage{Numerator: 500000, Denominator: 1_000_000}) {
		t.Errorf("route abort: fault = %#v", routes[0].Fault)
	}
	delay, ok := routes[1].Fault.(*fault.Fault)
	if !ok || delay.Delay == nil || delay.Delay.Duration != 2*time.Second || delay.Abort != nil {
		t.Errorf("route inherits: fault = %#v, want the virtual host's 2s delay", routes[1].Fault)
	}
}
