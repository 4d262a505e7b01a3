package config

import (
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// MemoryRelease hands the memory a large configuration update leaves
// behind back to the operating system soon after the update is applied.
// Decoding a mesh's first workload-discovery response allocates several
// times what the store keeps (the message, the decoded protos, the
// conversion), all garbage once it is applied; Go's runtime returns such
// memory only gradually, so a node's ztunnel would hold tens of MB it no
// longer uses. One forced collection after the update, rate-limited, costs
// milliseconds and brings the resident size down to what the state needs.
type MemoryRelease struct {
	// Threshold is the update size (bytes of resources received) from
	// which a release is scheduled; DefaultReleaseThreshold if zero.
	Threshold int
	// Delay is how long after a large update the release runs, so that
	// the response and its decoding are unreferenced by then.
	Delay time.Duration
	// MinInterval spaces releases: a steady stream of large updates gets
	// one release per interval, not one per update.
	MinInterval time.Duration

	free func() // freeOSMemory; replaced in tests

	mu      sync.Mutex
	pending bool
	last    time.Time
}

// DefaultReleaseThreshold: smaller updates leave too little to matter.
const DefaultReleaseThreshold = 1 << 20

// NewMemoryRelease returns a MemoryRelease with the delays ztunnel uses.
func NewMemoryRelease() *MemoryRelease {
	return &MemoryRelease{Delay: time.Second, MinInterval: 10 * time.Second}
}

// note records an applied update of n bytes and schedules a release if it
// was large and none is pending.
func (m *MemoryRelease) note(n int) {
	if m == nil {
		return
	}
	threshold := m.Threshold
	if threshold == 0 {
		threshold = DefaultReleaseThreshold
	}
	if n < threshold {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending {
		return
	}
	m.pending = true
	wait := m.Delay
	if next := time.Until(m.last.Add(m.MinInterval)); next > wait {
		wait = next
	}
	time.AfterFunc(wait, m.release)
}

// freeOSMemory collects twice before returning memory: buffers pooled in a
// sync.Pool (gRPC's receive buffers among them, the size of the largest
// message) survive one collection in the pool's victim cache.
func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

func (m *MemoryRelease) release() {
	free := m.free
	if free == nil {
		free = freeOSMemory
	}
	free()
	m.mu.Lock()
	m.pending, m.last = false, time.Now()
	m.mu.Unlock()
}
