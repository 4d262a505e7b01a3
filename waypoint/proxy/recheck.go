package proxy

import (
	"sync"

	"github.com/zmesh/zmesh/waypoint/config"
	"github.com/zmesh/zmesh/waypoint/filter/rbac"
)

// liveTunnels are the open tunnels, re-checked against the network RBAC
// filters of every new snapshot, as ztunnel re-checks its connections at
// every policy change: a tunnel a new policy no longer allows is closed
// instead of keeping what was allowed when it opened (an HTTP tunnel's
// requests pass its HTTP filters anyway; its tunnel-level filters, and a
// TCP tunnel's, are decided once at the start).
type liveTunnels struct {
	mu sync.Mutex
	m  map[*tunnel]liveTunnel
}

type liveTunnel struct {
	// http: served as HTTP, so the chain's ConnFilters decide; else its
	// TCPFilters.
	http  bool
	close func()
}

// add records an open tunnel; the returned func forgets it.
func (l *liveTunnels) add(t *tunnel, http bool, close func()) (remove func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[*tunnel]liveTunnel{}
	}
	l.m[t] = liveTunnel{http: http, close: close}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.m, t)
		l.mu.Unlock()
	}
}

func (l *liveTunnels) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// track records an open tunnel until the returned func is called. A
// snapshot that arrived after the tunnel was admitted and before it was
// recorded is checked here, so that no policy change slips between.
func (p *Proxy) track(t *tunnel, http bool, close func()) (untrack func()) {
	untrack = p.live.add(t, http, close)
	if st := p.state.Load(); st != nil {
		if ch := st.snap.Chains[t.dst]; ch != nil {
			filters := ch.TCPFilters
			if http {
				filters = ch.ConnFilters
			}
			if ok, _ := evaluateTunnel(filters, t); !ok {
				close()
			}
		}
	}
	return untrack
}

// recheck closes the open tunnels that the network RBAC filters of s deny.
// A tunnel whose destination s no longer serves is left to end on its own.
func (p *Proxy) recheck(s *config.Snapshot) {
	var denied []func()
	p.live.mu.Lock()
	for t, lt := range p.live.m {
		ch := s.Chains[t.dst]
		if ch == nil {
			continue
		}
		filters := ch.TCPFilters
		if lt.http {
			filters = ch.ConnFilters
		}
		if ok, policy := evaluateTunnel(filters, t); !ok {
			p.log.Info("open tunnel no longer allowed, closed", "policy", policy, "src.identity", t.principal, "src.addr", t.client.String(), "dst.addr", t.dst.String(), "chain", ch.Name)
			denied = append(denied, lt.close)
		}
	}
	p.live.mu.Unlock()
	for _, c := range denied {
		c()
	}
}

// evaluateTunnel runs network RBAC filters on a tunnel's attributes, with
// no side effect: whether it may pass and the deciding policy.
func evaluateTunnel(filters []config.HTTPFilter, t *tunnel) (bool, string) {
	req := tunnelRequest(t)
	policy := ""
	for i := range filters {
		if filters[i].RBAC == nil {
			continue
		}
		d := rbac.Evaluate(filters[i].RBAC, req)
		if d.Policy != "" {
			policy = d.Policy
		}
		if !d.Allowed {
			return false, policy
		}
	}
	return true, policy
}

// tunnelRequest is what a network RBAC filter sees of a tunnel.
func tunnelRequest(t *tunnel) *rbac.Request {
	return &rbac.Request{
		Principal:       t.principal,
		DirectRemoteIP:  t.client.Addr(),
		RemoteIP:        t.client.Addr(),
		DestinationIP:   t.dst.Addr(),
		DestinationPort: t.dst.Port(),
	}
}
