package authz

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/identity"
)

// Conn is what L4 policy sees of one connection at the destination.
type Conn struct {
	// Src is the original client address.
	Src netip.AddrPort
	// Dst is the destination workload's address and port, after service
	// resolution.
	Dst netip.AddrPort
	// Peer is the client's verified identity; the zero ID means plaintext
	// (no mutual TLS).
	Peer spiffeid.ID
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allowed bool
	// Policy is the key of the deciding policy, "" when the default decided.
	Policy string
	// Reason says why, for logs.
	Reason string
	// DryRun lists what dry-run policies would have done, for logs; they are
	// never enforced. Nil when there is nothing to report.
	DryRun []string
}

// Decision.Reason texts.
const (
	reasonDenied      = "denied by DENY policy "
	reasonDeniedByPA  = "mutual TLS required by PeerAuthentication "
	reasonAllowed     = "allowed by ALLOW policy "
	reasonNoAllow     = "no ALLOW policies"
	reasonNoneMatched = "no ALLOW policy matched"
	reasonRejected    = " was rejected, so it denies every connection until a good version arrives: "
)

// Evaluate decides a connection against the policies that apply to its
// destination workload; the caller selects them by scope (global, the
// workload's namespace, and the ones the workload lists). Nil entries are
// skipped. As in Istio: any matching DENY policy denies; otherwise, with no
// ALLOW policy the connection is allowed, and with some it is allowed only if
// one of them matches. Dry-run policies are evaluated the way ztunnel does and
// reported in Decision.DryRun.
func Evaluate(policies []*Policy, c Conn) Decision {
	p := newPeer(c)
	var d Decision

	for _, pol := range policies {
		if pol != nil && pol.DryRun && pol.Action == security.Action_DENY && pol.matches(&p) {
			d.DryRun = append(d.DryRun, pol.Key()+": would deny")
		}
	}
	for _, pol := range policies {
		if pol != nil && !pol.DryRun && pol.Action == security.Action_DENY && pol.matches(&p) {
			key := pol.Key()
			d.Policy, d.Reason = key, reasonDenied+key
			if pa, ok := PeerAuthentication(key); ok {
				d.Reason = reasonDeniedByPA + pa
			}
			if pol.rejected != "" {
				d.Reason = "policy " + key + reasonRejected + pol.rejected
			}
			return d
		}
	}

	haveAllow, haveDryRunAllow, dryRunAllowMatched := false, false, false
	for _, pol := range policies {
		if pol == nil || pol.Action != security.Action_ALLOW {
			continue
		}
		if !pol.DryRun {
			haveAllow = true
			continue
		}
		haveDryRunAllow = true
		if pol.matches(&p) {
			dryRunAllowMatched = true
			d.DryRun = append(d.DryRun, pol.Key()+": would allow")
		}
	}
	if !haveAllow {
		if haveDryRunAllow && !dryRunAllowMatched {
			// Allowed now, but enforcing the dry-run ALLOW policies would deny.
			d.DryRun = append(d.DryRun, "no dry-run ALLOW policy matched: would deny")
		}
		d.Allowed, d.Reason = true, reasonNoAllow
		return d
	}
	for _, pol := range policies {
		if pol != nil && !pol.DryRun && pol.Action == security.Action_ALLOW && pol.matches(&p) {
			key := pol.Key()
			d.Allowed, d.Policy, d.Reason = true, key, reasonAllowed+key
			return d
		}
	}
	d.Reason = reasonNoneMatched
	return d
}

// peer is a connection as matching sees it: addresses with IPv4-mapped IPv6
// unmapped and zones dropped (netip.Prefix.Contains refuses zoned addresses),
// and the identity split once for all policies.
type peer struct {
	src, dst netip.Addr
	dstPort  uint16

	// authenticated is false for plaintext: then no principal and no service
	// account matches.
	authenticated bool
	// principal is the SPIFFE ID without "spiffe://", the form Istio's
	// principals use: "cluster.local/ns/foo/sa/bar".
	principal string
	// namespace and serviceAccount come from a /ns/<ns>/sa/<sa> path; both
	// are empty for plaintext and for other SPIFFE IDs.
	namespace, serviceAccount string
	isWorkload                bool
}

func newPeer(c Conn) peer {
	p := peer{
		src:     c.Src.Addr().Unmap().WithZone(""),
		dst:     c.Dst.Addr().Unmap().WithZone(""),
		dstPort: c.Dst.Port(),
	}
	if c.Peer.IsZero() {
		return p
	}
	p.authenticated = true
	p.principal = c.Peer.TrustDomain().Name() + c.Peer.Path()
	if w, err := identity.WorkloadOf(c.Peer); err == nil {
		p.namespace, p.serviceAccount, p.isWorkload = w.Namespace, w.ServiceAccount, true
	}
	return p
}

func (pol *Policy) matches(p *peer) bool {
	return slices.ContainsFunc(pol.rules, func(r rule) bool { return r.matches(p) })
}

func (r rule) matches(p *peer) bool {
	for _, c := range r {
		if !c.matches(p) {
			return false
		}
	}
	return true
}

func (c clause) matches(p *peer) bool {
	if len(c) == 0 {
		return true
	}
	for i := range c {
		if c[i].matches(p) {
			return true
		}
	}
	return false
}

// matches follows ztunnel: a match with every list empty matches nothing
// (rather than everything), so that a clause made only of such matches does
// not match; an empty clause, on the other hand, matches.
func (m *match) matches(p *peer) bool {
	if m.isEmpty() {
		return false
	}
	return listMatch(m.destinationIPs, m.notDestinationIPs, func(pre netip.Prefix) bool { return pre.Contains(p.dst) }) &&
		listMatch(m.sourceIPs, m.notSourceIPs, func(pre netip.Prefix) bool { return pre.Contains(p.src) }) &&
		listMatch(m.destinationPorts, m.notDestinationPorts, func(port uint16) bool { return port == p.dstPort }) &&
		listMatch(m.serviceAccounts, m.notServiceAccounts, p.hasServiceAccount) &&
		listMatch(m.principals, m.notPrincipals, p.hasPrincipal) &&
		listMatch(m.namespaces, m.notNamespaces, p.inNamespace)
}

func (m *match) isEmpty() bool {
	return len(m.namespaces) == 0 && len(m.notNamespaces) == 0 &&
		len(m.serviceAccounts) == 0 && len(m.notServiceAccounts) == 0 &&
		len(m.principals) == 0 && len(m.notPrincipals) == 0 &&
		len(m.sourceIPs) == 0 && len(m.notSourceIPs) == 0 &&
		len(m.destinationIPs) == 0 && len(m.notDestinationIPs) == 0 &&
		len(m.destinationPorts) == 0 && len(m.notDestinationPorts) == 0
}

// listMatch applies one positive list and its not_ list: the positive list, if
// not empty, needs a hit; the not_ list must have none.
func listMatch[T any](positive, negative []T, hit func(T) bool) bool {
	if len(positive) > 0 && !slices.ContainsFunc(positive, hit) {
		return false
	}
	return !slices.ContainsFunc(negative, hit)
}

func (p *peer) hasPrincipal(m stringMatch) bool {
	// ztunnel matches principals against the "spiffe://" form and strips the
	// scheme first, so an unauthenticated peer matches no principal matcher,
	// not even one that accepts the empty string.
	return p.authenticated && m.matches(p.principal)
}

func (p *peer) inNamespace(m stringMatch) bool {
	// ztunnel gives a peer without identity the empty namespace and matches
	// it like any other value: presence does not match it, but an exact ""
	// or a prefix "" does. istiod's translation turns "*" into presence and
	// "x*" into prefix "x", so this only shows with hand-written policies.
	return m.matches(p.namespace)
}

func (p *peer) hasServiceAccount(sa serviceAccount) bool {
	return p.isWorkload && sa.namespace == p.namespace && sa.name == p.serviceAccount
}

func (m stringMatch) matches(s string) bool {
	switch m.kind {
	case exact:
		return s == m.value
	case prefix:
		return strings.HasPrefix(s, m.value)
	case suffix:
		return strings.HasSuffix(s, m.value)
	case presence:
		return s != ""
	}
	return false
}
