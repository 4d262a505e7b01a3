package agent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/zmesh/zmesh/cni/cniapi"
)

// Source is a membership source that also lists this node's pods, so that
// running pods follow label changes: Kubernetes informers, or zmeshd's
// workload stream without a cluster.
type Source interface {
	Membership
	// Pods lists the pods of this node the source knows, ambient or not,
	// that are running with an address. A pod it does not list is being
	// deleted or unknown: CNI DEL cleans up after those.
	Pods() []PodInfo
	// Changed receives (coalesced) when Pods may have changed.
	Changed() <-chan struct{}
}

// Status publishes a pod's enrolment where peers look for it: in a
// cluster, the annotation ambient.istio.io/redirection=enabled, which
// zmeshd needs before it advertises the pod as HBONE, so peers never
// tunnel to a 15008 that is not listening yet. Set is
// idempotent.
type Status interface {
	Set(ctx context.Context, p PodInfo, enabled bool) error
}

// Reconciler makes the node's capture follow the source: it enrols running
// pods that became ambient and releases captured pods that left the mesh.
type Reconciler struct {
	Node   *Node
	Source Source
	// Status may be nil (no cluster: zmeshd follows the labels).
	Status Status
	// ProcRoot is where running pods' namespaces are looked for (/proc).
	ProcRoot string
	// ReleaseDelay separates withdrawing a pod's status from removing its
	// capture: one push of zmeshd, so peers stop tunnelling to its 15008
	// first (0: 1s; negative: none).
	ReleaseDelay time.Duration
	// Resync is the interval of passes without changes; after a failed
	// pass the next comes within a second or two (default 30s).
	Resync time.Duration
	Log    *slog.Logger
}

// Action is what one pass does to one pod.
type Action int

const (
	Enrol   Action = iota + 1 // running, ambient, not captured
	Publish                   // captured and ambient: status enabled
	Release                   // captured, no longer ambient
	Clear                     // neither: status not enabled
)

// Plan decides a pass from the source's pods and the captured ones. A
// captured pod the source does not list is left alone: it is being
// deleted, and CNI DEL releases it.
func Plan(pods []PodInfo, captured func(uid string) bool) map[string]Action {
	out := make(map[string]Action, len(pods))
	for _, p := range pods {
		c := captured(p.UID)
		switch {
		case p.Ambient && c:
			out[p.UID] = Publish
		case p.Ambient && len(p.IPs) > 0:
			out[p.UID] = Enrol
		case !p.Ambient && c:
			out[p.UID] = Release
		case !p.Ambient:
			out[p.UID] = Clear
		}
	}
	return out
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// Run passes once, then on every change and every Resync, until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	resync := r.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	for {
		wait := resync
		if !r.Sync(ctx) {
			wait = 2 * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.Source.Changed():
		case <-t.C:
		}
		t.Stop()
	}
}

// Sync makes one pass and reports whether everything succeeded.
func (r *Reconciler) Sync(ctx context.Context) bool {
	pods := r.Source.Pods()
	plan := Plan(pods, r.Node.IsCaptured)
	ok := true
	var releasing []PodInfo
	for _, p := range pods {
		if ctx.Err() != nil {
			return false
		}
		switch plan[p.UID] {
		case Enrol:
			unlock := r.Node.lockPod(p.UID)
			err := error(nil)
			if !r.Node.IsCaptured(p.UID) { // CNI ADD may have come first
				err = r.Node.enrollRunning(ctx, &cniapi.Pod{UID: p.UID, Name: p.Name, Namespace: p.Namespace, IPs: p.IPs}, p.ServiceAccount, r.procRoot())
			}
			unlock()
			if err != nil {
				ok = false
				level := slog.LevelWarn
				if errors.Is(err, ErrNetnsNotFound) {
					// Listed before its sandbox is up (no cluster: the
					// directory gives the address first): CNI ADD takes it.
					level = slog.LevelDebug
				}
				r.log().Log(ctx, level, "cannot enrol running pod", "pod", p.Namespace+"/"+p.Name, "reason", err.Error())
				continue
			}
			ok = r.setStatus(ctx, p, true) && ok
		case Publish:
			ok = r.setStatus(ctx, p, true) && ok
		case Clear:
			ok = r.setStatus(ctx, p, false) && ok
		case Release:
			ok = r.setStatus(ctx, p, false) && ok
			releasing = append(releasing, p)
		}
	}
	if len(releasing) == 0 {
		return ok
	}
	// Peers learn from zmeshd's next push that the pods are plain again
	// and stop tunnelling to them; only then does capture go.
	delay := r.ReleaseDelay
	if delay == 0 {
		delay = time.Second
	}
	t := time.NewTimer(max(delay, 0))
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
	}
	still := map[string]bool{}
	for _, p := range r.Source.Pods() {
		still[p.UID] = p.Ambient
	}
	for _, p := range releasing {
		if still[p.UID] {
			continue // back in the mesh meanwhile; the next pass publishes it again
		}
		unlock := r.Node.lockPod(p.UID)
		err := r.Node.releaseCaptured(ctx, p.UID)
		unlock()
		if err != nil {
			ok = false
			r.log().Warn("cannot release pod", "pod", p.Namespace+"/"+p.Name, "reason", err.Error())
		}
	}
	return ok
}

func (r *Reconciler) setStatus(ctx context.Context, p PodInfo, enabled bool) bool {
	if r.Status == nil {
		return true
	}
	if err := r.Status.Set(ctx, p, enabled); err != nil {
		r.log().Warn("cannot publish pod's redirection status", "pod", p.Namespace+"/"+p.Name, "enabled", enabled, "reason", err.Error())
		return false
	}
	return true
}

func (r *Reconciler) procRoot() string {
	if r.ProcRoot == "" {
		return "/proc"
	}
	return r.ProcRoot
}
