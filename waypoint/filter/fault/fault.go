// Package fault is the waypoint's fault-injection filter: Envoy's
// envoy.filters.http.fault compiled (by waypoint/config.CompileFault) into a
// Fault, and Decide, the pure choice of a delay and an abort for one
// request from random numbers the caller draws.
//
// Istio configures faults per route: the filter in the chain has an empty
// configuration and each route carries its own in typed_per_filter_config,
// which replaces the filter's for requests on that route.
package fault

import (
	"time"

	"github.com/zmesh/zmesh/waypoint/route"
)

// What the proxy answers and logs, as Envoy does.
const (
	FilterName = "envoy.filters.http.fault"
	AbortBody  = "fault filter abort"
	FlagDelay  = "DI" // the access log's response flag for an injected delay
	FlagAbort  = "FI" // and for an injected abort
)

// Percentage is Envoy's FractionalPercent: a fault applies when the
// request's random number modulo Denominator is below Numerator (a
// numerator above the denominator is always).
type Percentage struct {
	Numerator   uint32
	Denominator uint32 // 100, 10000 or 1000000
}

// Enabled reports whether the random number rnd falls in the percentage.
func (p Percentage) Enabled(rnd uint64) bool {
	return rnd%uint64(p.Denominator) < uint64(p.Numerator)
}

// Delay is a fixed delay injected before the request goes on.
type Delay struct {
	Duration time.Duration
	Percent  Percentage
}

// Abort answers the request locally instead of forwarding it.
type Abort struct {
	// HTTPStatus is the response status; for a gRPC abort it is 200 and
	// GRPCStatus holds the grpc-status to send.
	HTTPStatus int
	GRPC       bool
	GRPCStatus uint32
	Percent    Percentage
}

// Fault is one compiled HTTPFault; never modified after compilation.
type Fault struct {
	Delay *Delay
	Abort *Abort
	// Headers must all match for the fault to apply.
	Headers []route.HeaderMatcher
	// MaxActiveFaults bounds the requests being faulted at once (0:
	// unbounded). Decide does not count: the proxy does, and skips the
	// fault when the bound is reached, as Envoy does.
	MaxActiveFaults uint32
}

// Applies reports whether the request's headers select it for the fault.
func (f *Fault) Applies(req *route.Request) bool {
	if f == nil {
		return false
	}
	for i := range f.Headers {
		if !f.Headers[i].Match(req) {
			return false
		}
	}
	return true
}

// Decide picks the fault for one request that Applies: rndDelay decides the
// delay, rndAbort the abort, each against its own percentage (Envoy draws
// one random number for each). A nil abort means forward the request.
func Decide(f *Fault, rndDelay, rndAbort uint64) (delay time.Duration, abort *Abort) {
	if f == nil {
		return 0, nil
	}
	if f.Delay != nil && f.Delay.Percent.Enabled(rndDelay) {
		delay = f.Delay.Duration
	}
	if f.Abort != nil && f.Abort.Percent.Enabled(rndAbort) {
		abort = f.Abort
	}
	return delay, abort
}
