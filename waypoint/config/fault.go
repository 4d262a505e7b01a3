package config

import (
	"errors"
	"fmt"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/waypoint/filter/fault"
)

// CompileFault validates a fault filter's configuration (in the HTTP filter
// chain, or a route's typed_per_filter_config, which has the same type)
// against the supported subset and compiles it. Any set field the waypoint
// does not implement, and any invalid value, is a *NackError naming the
// field path.
func CompileFault(name string, cfg *faultv3.HTTPFault) (*fault.Fault, error) {
	f, err := compileFault("", cfg)
	if err != nil {
		var ne *NackError
		if errors.As(err, &ne) {
			ne.Resource = name
		}
		return nil, err
	}
	return f, nil
}

// CompileFaultPerRoute compiles a route's (or virtual host's)
// typed_per_filter_config entry for the fault filter; path is where the
// entry sits, for errors.
func CompileFaultPerRoute(path string, a *anypb.Any) (*fault.Fault, error) {
	m, err := unpack(a)
	if err != nil {
		return nil, nackf(path, "%v", err)
	}
	hf, ok := m.(*faultv3.HTTPFault)
	if !ok {
		return nil, nackf(path, "%s is not an HTTPFault", a.GetTypeUrl())
	}
	return compileFault(path, hf)
}

func compileFault(path string, cfg *faultv3.HTTPFault) (*fault.Fault, error) {
	if cfg == nil {
		return nil, nackf(path, "no fault configuration")
	}
	if err := checkSupported(cfg.ProtoReflect(), path); err != nil {
		return nil, err
	}
	out := &fault.Fault{MaxActiveFaults: cfg.GetMaxActiveFaults().GetValue()}
	if cfg.GetMaxActiveFaults() != nil && out.MaxActiveFaults == 0 {
		// Envoy would then inject nothing; a configuration that means "never" is a mistake.
		return nil, nackf(join(path, "max_active_faults"), "0 disables every fault")
	}
	var c compiler
	for i, h := range cfg.GetHeaders() {
		hm, err := c.headerMatcher(fmt.Sprintf("%s[%d]", join(path, "headers"), i), h)
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, hm)
	}
	if d := cfg.GetDelay(); d != nil {
		dp := join(path, "delay")
		if d.GetFixedDelay() == nil {
			return nil, nackf(dp+".fixed_delay", "required")
		}
		dur, err := duration(dp+".fixed_delay", d.GetFixedDelay())
		if err != nil {
			return nil, err
		}
		pct, err := percentage(dp+".percentage", d.GetPercentage())
		if err != nil {
			return nil, err
		}
		out.Delay = &fault.Delay{Duration: dur, Percent: pct}
	}
	if a := cfg.GetAbort(); a != nil {
		ap := join(path, "abort")
		ab := &fault.Abort{}
		switch e := a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			// Envoy's validation: [200, 600).
			if e.HttpStatus < 200 || e.HttpStatus >= 600 {
				return nil, nackf(ap+".http_status", "%d is not in [200, 600)", e.HttpStatus)
			}
			ab.HTTPStatus = int(e.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			if e.GrpcStatus > 16 {
				return nil, nackf(ap+".grpc_status", "%d is not a gRPC status code (0-16)", e.GrpcStatus)
			}
			ab.HTTPStatus, ab.GRPC, ab.GRPCStatus = 200, true, e.GrpcStatus
		default:
			return nil, nackf(ap, "http_status or grpc_status is required")
		}
		pct, err := percentage(ap+".percentage", a.GetPercentage())
		if err != nil {
			return nil, err
		}
		ab.Percent = pct
		out.Abort = ab
	}
	return out, nil
}

// percentage compiles a FractionalPercent keeping its denominator, so that
// the split falls where Envoy's does for the same random number. Unset is
// Envoy's zero value: 0/100, never.
func percentage(path string, fp *typev3.FractionalPercent) (fault.Percentage, error) {
	p := fault.Percentage{Numerator: fp.GetNumerator()}
	switch fp.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		p.Denominator = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		p.Denominator = 10_000
	case typev3.FractionalPercent_MILLION:
		p.Denominator = 1_000_000
	default:
		return p, nackf(path+".denominator", "unknown value %d", fp.GetDenominator())
	}
	return p, nil
}
