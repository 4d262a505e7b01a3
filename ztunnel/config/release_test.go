package config

import (
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/internal/xdsclient"
	"github.com/zmesh/zmesh/ztunnel/state"
)

// TestMemoryReleaseAfterLargeUpdates: an update past the threshold is
// followed by one release after the delay; updates arriving meanwhile do
// not add releases, the next one waits out the interval, and small updates
// never release.
func TestMemoryReleaseAfterLargeUpdates(t *testing.T) {
	var calls atomic.Int32
	var at [2]atomic.Int64 // when the first two releases ran, in ns
	m := &MemoryRelease{Threshold: 1000, Delay: 50 * time.Millisecond, MinInterval: 500 * time.Millisecond,
		free: func() {
			if n := calls.Add(1); n <= 2 {
				at[n-1].Store(time.Now().UnixNano())
			}
		}}
	h := XDSHandler{Store: state.NewStore(), Release: m}
	apply := func(size int) {
		// Bytes that do not decode are rejected, but what was received
		// is what counts: the decoding garbage is there either way.
		r := xdsclient.Resource{Name: "w", Body: &anypb.Any{TypeUrl: "type.googleapis.com/istio.workload.Address", Value: make([]byte, size)}}
		h.Apply(xdsclient.TypeAddress, []xdsclient.Resource{r}, nil)
	}
	waitCalls := func(want int32, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for calls.Load() < want && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := calls.Load(); got != want {
			t.Fatalf("%d releases, want %d", got, want)
		}
	}

	apply(999)
	time.Sleep(150 * time.Millisecond)
	waitCalls(0, 0)

	start := time.Now()
	apply(1000)
	apply(5000)
	waitCalls(1, 10*time.Second)
	// Timers never fire early, so these lower bounds hold on any load.
	if d := time.Duration(at[0].Load() - start.UnixNano()); d < 50*time.Millisecond {
		t.Fatalf("released %s after the update, before the delay", d)
	}
	time.Sleep(150 * time.Millisecond)
	waitCalls(1, 0) // the second update joined the first release

	apply(2000)
	waitCalls(2, 10*time.Second)
	if d := time.Duration(at[1].Load() - at[0].Load()); d < 500*time.Millisecond {
		t.Fatalf("second release %s after the first, want at least the 500ms interval", d)
	}
}
