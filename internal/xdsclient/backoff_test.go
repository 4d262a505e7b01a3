package xdsclient

import (
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

func TestBackoffDoublesWithJitterAndResets(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	for _, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceiling *= time.Millisecond
		if d := b.next(); d < ceiling/2 || d >= ceiling {
			t.Errorf("wait %v, want in [%v, %v)", d, ceiling/2, ceiling)
		}
	}
	b.reset()
	if d := b.next(); d >= 100*time.Millisecond {
		t.Errorf("wait after reset %v, want below the minimum 100ms", d)
	}
}

// A stream that delivered a response resets the backoff: twenty streams
// that each deliver one and then end would take hours without the reset.
func TestBackoffResetsAfterAResponse(t *testing.T) {
	e := newEnv(t, TypeAddress, envOption(func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Millisecond, time.Hour }))
	for range 20 {
		s := e.srv.nextStream(t)
		s.next(t)
		s.push(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "n"})
		s.next(t)
		s.end(nil)
	}
	e.srv.nextStream(t)
}
