package proxy

import (
	"errors"
	"net"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/ztunnel/authz"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// Live connections are re-checked when policy changes, as Istio's ztunnel
// does: an allowed inbound connection stays registered with its pod while
// it runs, and each new snapshot decides it again. One that the policies
// now in force no longer allow is reset on both sides at once, and its
// access-log line says which policy ended it. A destination that has come
// behind a waypoint ends the live connections that did not come through
// it the same way. Only these decisions are re-run: a destination that
// left the snapshot, or a policy a workload lists but that has not arrived
// yet, leaves live connections alone (new ones fail closed on them), since
// both happen in passing while config streams in and a pod's removal
// drains its connections anyway.

// inboundConn is an inbound connection policy allowed.
type inboundConn struct {
	conn      authz.Conn
	down, app net.Conn
	// policies are those it was last decided against (guarded by the
	// tracker's mu): a snapshot whose policies for it are the same ones
	// (compiled policies are immutable and keep their pointer while
	// unchanged) cannot decide differently, so it is not evaluated again.
	policies []*authz.Policy
	version  uint64 // of the snapshot it was last decided on
	// allowedBy is the policy that admitted it, for its access-log line.
	allowedBy string
	// revoked is set once a policy change refuses the connection.
	revoked atomic.Pointer[revocation]
}

// revocation is why a live connection was closed: the decision, and the
// policy to name (the deciding one, or the ALLOW policies none of which
// matched).
type revocation struct {
	authz.Decision
	by string
	// bypass: no policy refused it, the destination's waypoint did (the
	// connection did not come through it).
	bypass bool
}

var errRevoked = errors.New("closed: policy no longer allows the connection")

// admit registers an allowed inbound connection (down: the client side,
// app: the connection to the app) with its pod until forget. v is the
// verdict it was allowed by, on snap. If the store has moved past snap
// meanwhile, the connection is decided again at once, so that a change
// the pod's watcher swept before the registration is not missed.
func (p *Proxy) admit(pd *pod, snap *state.Snapshot, c authz.Conn, v Verdict, down, app net.Conn) *inboundConn {
	ic := &inboundConn{conn: c, down: down, app: app, version: snap.Version(), allowedBy: v.Policy}
	if v.Workload != nil {
		ic.policies, _ = snap.PoliciesFor(v.Workload)
	}
	t := &pd.conns
	t.mu.Lock()
	if t.inbound == nil {
		t.inbound = make(map[*inboundConn]struct{})
	}
	t.inbound[ic] = struct{}{}
	t.mu.Unlock()
	if cur := p.cfg.State.Snapshot(); cur.Version() != snap.Version() {
		p.recheckPod(pd, cur)
	}
	return ic
}

// forget unregisters the connection once it has ended.
func (pd *pod) forget(ic *inboundConn) {
	pd.conns.mu.Lock()
	delete(pd.conns.inbound, ic)
	pd.conns.mu.Unlock()
}

// result is the connection's outcome for telemetry: denied, naming the
// policy, if a policy change ended it.
func (ic *inboundConn) result(sent, received int64, err error) telemetry.Result {
	if r := ic.revoked.Load(); r != nil {
		return withPolicy(telemetry.Result{Sent: sent, Received: received, Err: errRevoked, Reason: r.Reason, Flags: telemetry.FlagDenied}, r.by)
	}
	return withPolicy(telemetry.Result{Sent: sent, Received: received, Err: err}, ic.allowedBy)
}

// withPolicy names the deciding policy in r, or the PeerAuthentication it
// enforces.
func withPolicy(r telemetry.Result, key string) telemetry.Result {
	if pa, ok := authz.PeerAuthentication(key); ok {
		r.PeerAuthentication = pa
	} else {
		r.Policy = key
	}
	return r
}

// watchPolicy re-checks the pod's inbound connections at every change of
// the state until the pod is cut.
func (p *Proxy) watchPolicy(pd *pod) {
	defer p.wg.Done()
	for {
		changed := p.cfg.State.Changed()
		select {
		case <-pd.ctx.Done():
			return
		case <-changed:
		}
		p.recheckPod(pd, p.cfg.State.Snapshot())
	}
}

// recheckPod decides the pod's inbound connections again on snap and
// resets those it no longer allows.
func (p *Proxy) recheckPod(pd *pod, snap *state.Snapshot) {
	var revoked []*inboundConn
	sel := policySelection{snap: snap, network: p.cfg.Network}
	t := &pd.conns
	t.mu.Lock()
	for ic := range t.inbound {
		if ic.version >= snap.Version() || ic.revoked.Load() != nil {
			continue // decided on this snapshot or a newer one already
		}
		ic.version = snap.Version()
		d, bypass, changed := sel.recheck(ic)
		if changed && !d.Allowed {
			r := &revocation{Decision: d, bypass: bypass}
			if !bypass {
				r.by = refusedBy(d, ic.policies)
			}
			ic.revoked.Store(r)
			revoked = append(revoked, ic)
		}
	}
	t.mu.Unlock()
	for _, ic := range revoked {
		r := ic.revoked.Load()
		if r.bypass {
			p.log.Warn("connection closed: the destination is now behind a waypoint", "dst.workload", pd.String(), "dst.addr", ic.conn.Dst.String(),
				"src.addr", ic.conn.Src.String(), "src.identity", peerID(ic.conn), "reason", r.Reason)
			reset(ic.down)
			reset(ic.app)
			continue
		}
		by := telemetry.KeyPolicy
		name := r.by
		if pa, ok := authz.PeerAuthentication(r.by); ok {
			by, name = telemetry.KeyPeerAuthentication, pa
		}
		p.log.Warn("connection closed: policy no longer allows it", "dst.workload", pd.String(), "dst.addr", ic.conn.Dst.String(),
			"src.addr", ic.conn.Src.String(), "src.identity", peerID(ic.conn), by, name, "reason", r.Reason)
		reset(ic.down)
		reset(ic.app)
	}
}

// policySelection selects the policies of destinations on one snapshot,
// once per workload however many of its connections are re-checked.
type policySelection struct {
	snap    *state.Snapshot
	network string
	byDst   map[*state.Workload][]*authz.Policy // nil value: a listed policy is missing
}

// recheck decides ic on the snapshot. A destination now behind a waypoint
// that ic did not come through refuses it (bypass). Otherwise changed is
// false when the snapshot cannot decide otherwise than before: the
// destination is gone or lists a policy not yet received (new connections
// fail closed on those; live ones are left to the pod's removal or the
// policy's arrival), or its policies are the same ones. ic.policies
// (guarded by the tracker's mu) becomes the snapshot's.
func (sel *policySelection) recheck(ic *inboundConn) (d authz.Decision, bypass, changed bool) {
	w := sel.snap.WorkloadByAddr(state.NetAddr{Network: sel.network, Addr: ic.conn.Dst.Addr().Unmap()})
	if w == nil {
		return d, false, false
	}
	// A binding is a deliberate change, not config streaming in: a
	// connection opened directly before it must not outlive it.
	if reason := sel.snap.WaypointRefusal(w, ic.conn.Dst.Port(), ic.conn.Peer); reason != "" {
		return authz.Decision{Reason: reason}, true, true
	}
	policies, seen := sel.byDst[w]
	if !seen {
		var missing []string
		policies, missing = sel.snap.PoliciesFor(w)
		if len(missing) > 0 {
			policies = nil
		} else if policies == nil {
			policies = []*authz.Policy{} // none apply: not the same as missing
		}
		if sel.byDst == nil {
			sel.byDst = map[*state.Workload][]*authz.Policy{}
		}
		sel.byDst[w] = policies
	}
	if policies == nil || slices.Equal(policies, ic.policies) {
		return d, false, false
	}
	ic.policies = policies
	return authz.Evaluate(policies, ic.conn), false, true
}

// refusedBy is the policy to name for a refusal: the deciding one, or,
// when no ALLOW policy matched, the ALLOW policies in force.
func refusedBy(d authz.Decision, policies []*authz.Policy) string {
	if d.Policy != "" {
		return d.Policy
	}
	var allows []string
	for _, pol := range policies {
		if pol != nil && !pol.DryRun && pol.Action == security.Action_ALLOW {
			allows = append(allows, pol.Key())
		}
	}
	return strings.Join(allows, ",")
}

func peerID(c authz.Conn) string {
	if c.Peer.IsZero() {
		return ""
	}
	return c.Peer.String()
}

// reset ends c at once: a TCP socket with a reset rather than a FIN, which
// the app could take for the end of a request; a stream with RST_STREAM.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
