// Package redirect installs and removes the routing half of zmesh's capture
// inside a pod's network namespace (docs/capture.md): the pod's TCP is
// delivered locally through table 100 so the sk_lookup program sees it,
// while the proxy's own marked sockets and replies to exempt probes route
// normally. Everything is done with netlink in the pod's namespace; no
// iptables, no `ip` commands. Apply and Remove are idempotent.
package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Values shared with ztunnel and the bpf program.
const (
	// ProxyMark is SO_MARK on every socket ztunnel opens in a pod.
	ProxyMark = 0x539
	// Table is the routing table that delivers the pod's TCP locally.
	Table = 100

	prefProbe = 98
	prefMark  = 99
	prefTCP   = 100

	// HBONEPort is ztunnel's inbound HBONE port in every captured pod.
	HBONEPort = 15008
)

// Config is what the routing of one pod depends on.
type Config struct {
	// PodIPs are the pod's addresses: at most one IPv4 and one IPv6.
	PodIPs []netip.Addr
	// ProbeSources are the addresses kubelet probes come from (the node's
	// address towards the pod); replies to them route normally.
	ProbeSources []netip.Addr
	// Iface is the pod's interface, "eth0" when empty.
	Iface string
}

func (c *Config) iface() string {
	if c.Iface == "" {
		return "eth0"
	}
	return c.Iface
}

func (c *Config) validate() error {
	var v4, v6 int
	for _, ip := range c.PodIPs {
		if ip.Unmap().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4+v6 == 0 {
		return errors.New("redirect: no pod IP")
	}
	if v4 > 1 || v6 > 1 {
		return fmt.Errorf("redirect: pod IPs %v: at most one IPv4 and one IPv6", c.PodIPs)
	}
	return nil
}

// family is one address family's share of the setup.
type family struct {
	af    int
	podIP netip.Addr
	all   *net.IPNet
}

func (c *Config) families() []family {
	var out []family
	for _, ip := range c.PodIPs {
		ip = ip.Unmap()
		if ip.Is4() {
			out = append(out, family{unix.AF_INET, ip, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
		} else {
			out = append(out, family{unix.AF_INET6, ip, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}})
		}
	}
	return out
}

func (c *Config) rules(f family) []*netlink.Rule {
	mask := uint32(0xffffffff)
	var rules []*netlink.Rule
	for _, src := range c.ProbeSources {
		src = src.Unmap()
		if src.Is4() != (f.af == unix.AF_INET) {
			continue
		}
		r := netlink.NewRule()
		r.Family, r.Priority, r.Table = f.af, prefProbe, unix.RT_TABLE_MAIN
		r.Dst = hostNet(src)
		rules = append(rules, r)
	}
	mark := netlink.NewRule()
	mark.Family, mark.Priority, mark.Table = f.af, prefMark, unix.RT_TABLE_MAIN
	mark.Mark, mark.Mask = ProxyMark, &mask
	// The kernel's resets from 15008 when no ztunnel listens there carry no
	// mark; without this rule they would be delivered back into the pod and
	// a peer's HBONE connect would hang instead of being refused at once.
	hbone := netlink.NewRule()
	hbone.Family, hbone.Priority, hbone.Table = f.af, prefMark, unix.RT_TABLE_MAIN
	hbone.IPProto = unix.IPPROTO_TCP
	hbone.Sport = netlink.NewRulePortRange(HBONEPort, HBONEPort)
	// Only TCP: a `not fwmark` rule would invert the whole match and
	// capture UDP as well.
	tcp := netlink.NewRule()
	tcp.Family, tcp.Priority, tcp.Table = f.af, prefTCP, Table
	tcp.IPProto = unix.IPPROTO_TCP
	return append(rules, mark, hbone, tcp)
}

func (c *Config) route(f family, lo int) *netlink.Route {
	// src is required: without it the kernel picks the destination as the
	// source and connect fails with "network is unreachable".
	return &netlink.Route{
		Dst: f.all, Type: unix.RTN_LOCAL, Table: Table, LinkIndex: lo,
		Scope: netlink.SCOPE_HOST, Src: f.podIP.AsSlice(), Family: f.af,
	}
}

// sysctls returns the per-pod settings: accept_local so inbound SYNs are
// not dropped as martians once table 100 exists (the reverse-path check
// lands there), and tcp_migrate_req so a restarting ztunnel's accept queue
// moves to its successor's listeners.
func (c *Config) sysctls(on bool) map[string]string {
	v := "0"
	if on {
		v = "1"
	}
	return map[string]string{
		"net/ipv4/conf/" + c.iface() + "/accept_local": v,
		"net/ipv4/tcp_migrate_req":                     v,
	}
}

// Apply installs the redirection in the namespace. Re-applying is a no-op.
func Apply(ns netns.NsHandle, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	nl, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: find lo: %w", err)
	}
	if err := inNS(ns, func() error { return writeSysctls(cfg.sysctls(true)) }); err != nil {
		return err
	}
	for _, f := range cfg.families() {
		for _, r := range cfg.rules(f) {
			if err := nl.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("redirect: add rule %s: %w", r, err)
			}
		}
		if err := nl.RouteReplace(cfg.route(f, lo.Attrs().Index)); err != nil {
			return fmt.Errorf("redirect: table %d local route for %s: %w", Table, f.podIP, err)
		}
	}
	return nil
}

// Remove takes the redirection out again, restoring the sysctls. What is
// already gone is fine.
func Remove(ns netns.NsHandle, cfg Config) error {
	nl, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	var errs []error
	for _, f := range cfg.families() {
		for _, r := range cfg.rules(f) {
			if err := nl.RuleDel(r); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("redirect: delete rule %s: %w", r, err))
			}
		}
		routes, err := nl.RouteListFiltered(f.af, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, err)
		}
		for _, rt := range routes {
			if err := nl.RouteDel(&rt); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("redirect: delete route %s: %w", rt, err))
			}
		}
	}
	if err := inNS(ns, func() error { return writeSysctls(cfg.sysctls(false)) }); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Check reports what is missing of the redirection, for CNI CHECK.
func Check(ns netns.NsHandle, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	nl, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	var missing []string
	for _, f := range cfg.families() {
		have, err := nl.RuleList(f.af)
		if err != nil {
			return err
		}
		for _, want := range cfg.rules(f) {
			if !hasRule(have, want) {
				missing = append(missing, "rule "+want.String())
			}
		}
		routes, err := nl.RouteListFiltered(f.af, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		found := false
		for _, rt := range routes {
			found = found || (rt.Type == unix.RTN_LOCAL && rt.Src.Equal(f.podIP.AsSlice()))
		}
		if !found {
			missing = append(missing, fmt.Sprintf("table %d local route with src %s", Table, f.podIP))
		}
	}
	err = inNS(ns, func() error {
		for k, want := range cfg.sysctls(true) {
			got, err := os.ReadFile("/proc/sys/" + k)
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(got)) != want {
				missing = append(missing, "sysctl "+k+"="+want)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("redirect: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

func handleIn(ns netns.NsHandle) (*netlink.Handle, error) {
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("redirect: netlink in pod netns: %w", err)
	}
	return nl, nil
}

func hasRule(have []netlink.Rule, want *netlink.Rule) bool {
	for _, r := range have {
		if r.Priority != want.Priority || r.Table != want.Table || r.IPProto != want.IPProto || r.Mark != want.Mark {
			continue
		}
		if (r.Sport == nil) != (want.Sport == nil) || (r.Sport != nil && *r.Sport != *want.Sport) {
			continue
		}
		if (r.Dst == nil) != (want.Dst == nil) || (r.Dst != nil && r.Dst.String() != want.Dst.String()) {
			continue
		}
		return true
	}
	return false
}

func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EADDRNOTAVAIL)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func writeSysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
			return fmt.Errorf("redirect: sysctl %s=%s: %w", strings.ReplaceAll(k, "/", "."), v, err)
		}
	}
	return nil
}

// inNS runs fn on a locked OS thread inside ns: /proc/sys/net shows the
// namespace of the thread that opens it.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return // thread stays locked and dies with the goroutine
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter pod netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave pod netns: %w", err))
			return // tainted thread: exit locked so the runtime drops it
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
