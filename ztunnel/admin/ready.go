package admin

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Ready tracks what ztunnel is still waiting for before it can take
// traffic. The zero value is ready, with nothing pending.
type Ready struct {
	mu      sync.Mutex
	pending map[*Blocker]struct{}
}

// Blocker holds readiness back until it is done.
type Blocker struct {
	r    *Ready
	name string
}

// Register adds a blocker named name; readiness waits until it is done.
// Names need not be unique: two blockers of the same name are waited for
// separately.
func (r *Ready) Register(name string) *Blocker {
	b := &Blocker{r: r, name: name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = make(map[*Blocker]struct{})
	}
	r.pending[b] = struct{}{}
	return b
}

// Done stops b from holding readiness back. Calling it again does nothing.
func (b *Blocker) Done() {
	b.r.mu.Lock()
	defer b.r.mu.Unlock()
	delete(b.r.pending, b)
}

// Pending returns the names of the blockers not yet done, sorted.
func (r *Ready) Pending() []string {
	r.mu.Lock()
	names := make([]string, 0, len(r.pending))
	for b := range r.pending {
		names = append(names, b.name)
	}
	r.mu.Unlock()
	slices.Sort(names)
	return names
}

// Handler serves /healthz/ready: 200 "ready" once nothing is pending, 503
// naming what is otherwise. (Istio's ztunnel answers 500; any non-2xx fails
// a kubelet probe, and 503 says "not yet" rather than "broken".)
func (r *Ready) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if p := r.Pending(); len(p) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready, pending: %s\n", strings.Join(p, ", "))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
