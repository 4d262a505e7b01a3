package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

const proxyConfigHelp = `
Reads a waypoint's configuration from its admin endpoint (GET /config_dump:
Envoy's ConfigDump, with the Listener, RouteConfiguration, Cluster and
ClusterLoadAssignment resources the waypoint runs) and prints one kind as a
table, as istioctl proxy-config does. WAYPOINT names the waypoint in
messages and, without --admin-address, is reached through the API server
(a port-forward to its pod's admin port, as istioctl does); --admin-address
says where an admin endpoint already is, e.g. after
  kubectl -n default port-forward deploy/waypoint 15000:15000

-o json|yaml prints the whole dump as the waypoint sent it.`

// waypointAdminPort is the waypoint's admin port in its pod.
const waypointAdminPort = 15000

// proxyConfigKinds are the tables proxy-config prints, with istioctl's
// names and aliases.
var proxyConfigKinds = []struct {
	name    string
	aliases []string
	short   string
	table   func(*envoyDump) table
}{
	{"listeners", []string{"listener", "l"}, "show a waypoint's listener filter chains: what each matches and where it sends", listenerTable},
	{"routes", []string{"route", "r"}, "show a waypoint's routes: route config, virtual host, domains, match", routeTable},
	{"clusters", []string{"cluster", "c"}, "show a waypoint's clusters: service, port, subset, direction, type", clusterTable},
	{"endpoints", []string{"endpoint", "ep"}, "show a waypoint's endpoints: address, health, locality, cluster", endpointTable},
}

func (c *cli) proxyConfigCommand() *cobra.Command {
	group := &cobra.Command{
		Use:     "proxy-config",
		Aliases: []string{"pc"},
		Short:   "show what a waypoint runs: listeners, routes, clusters, endpoints",
		Long:    help(proxyConfigHelp),
	}
	for _, kind := range proxyConfigKinds {
		var out format
		cmd := &cobra.Command{
			Use:     kind.name + " [WAYPOINT]",
			Aliases: kind.aliases,
			Short:   kind.short,
			Long:    help(proxyConfigHelp),
		}
		addOutputFlag(cmd.Flags(), &out)
		ep := endpointFlags(cmd.Flags(), "admin-address", "127.0.0.1:15000", "waypoint admin",
			"is the waypoint's admin port forwarded here? use --admin-address")
		cmd.RunE = func(cmd *cobra.Command, pos []string) error {
			if len(pos) > 1 {
				return usagef("want at most one waypoint, got %d", len(pos))
			}
			e, err := ep()
			if err != nil {
				return err
			}
			if len(pos) == 1 {
				e.what = "waypoint " + pos[0] + " admin"
			}
			// A named waypoint without --admin-address: its pod's admin
			// port through the API server's port-forward.
			if len(pos) == 1 && !cmd.Flags().Changed("admin-address") {
				cl, err := c.kube.clients()
				if err != nil {
					return err
				}
				addr, stop, err := c.forwardToWaypoint(cmd.Context(), cl, pos[0], waypointAdminPort)
				if err != nil {
					return err
				}
				defer stop()
				e.addr, e.base = addr+" (port-forward to waypoint "+cl.namespace+"/"+pos[0]+")", "http://"+addr
			}
			return c.proxyConfig(cmd.Context(), e, out, kind.table)
		}
		group.AddCommand(cmd)
	}
	return group
}

func (c *cli) proxyConfig(ctx context.Context, e endpoint, out format, t func(*envoyDump) table) error {
	body, err := e.get(ctx, "/config_dump")
	if err != nil {
		return err
	}
	switch out {
	case "json":
		_, err := c.stdout.Write(append([]byte(strings.TrimRight(string(body), "\n")), '\n'))
		return err
	case "yaml":
		y, err := yaml.JSONToYAML(body)
		if err != nil {
			return fmt.Errorf("%s at %s: config dump is not JSON: %w", e.what, e.addr, err)
		}
		_, err = c.stdout.Write(y)
		return err
	}
	d, err := decodeEnvoyDump(body)
	if err != nil {
		return fmt.Errorf("%s at %s: %w", e.what, e.addr, err)
	}
	return t(d).write(c.stdout)
}

// listenerTable is istioctl's listener summary: per filter chain, the
// listener's address, the port it matches, its match and its destination.
func listenerTable(d *envoyDump) table {
	t := table{header: []string{"ADDRESSES", "PORT", "MATCH", "DESTINATION"}}
	for _, l := range d.Listeners {
		addr, port := socketAddress(l.GetAddress())
		for _, fc := range l.GetFilterChains() {
			m := fc.GetFilterChainMatch()
			p := port
			if dp := m.GetDestinationPort(); dp != nil {
				p = fmt.Sprint(dp.GetValue())
			}
			var match []string
			if pr := m.GetPrefixRanges(); len(pr) > 0 {
				var cidrs []string
				for _, r := range pr {
					cidrs = append(cidrs, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
				}
				match = append(match, "Addr: "+strings.Join(cidrs, ","))
			}
			if tp := m.GetTransportProtocol(); tp != "" {
				match = append(match, "Trans: "+tp)
			}
			if ap := m.GetApplicationProtocols(); len(ap) > 0 {
				match = append(match, "App: "+strings.Join(ap, ","))
			}
			if len(match) == 0 {
				match = []string{"ALL"}
			}
			t.rows = append(t.rows, []string{addr, p, strings.Join(match, "; "), chainDestination(fc)})
		}
	}
	return t
}

// routeTable is istioctl's route summary: one row per route.
func routeTable(d *envoyDump) table {
	t := table{header: []string{"NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"}}
	rcs := slices.Clone(d.Routes)
	slices.SortStableFunc(rcs, func(a, b routeConfig) int { return strings.Compare(a.GetName(), b.GetName()) })
	for _, rc := range rcs {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				t.rows = append(t.rows, []string{rc.GetName(), vh.GetName(), describeDomains(vh.GetDomains()), describeMatch(r), istioConfigName(r.GetMetadata())})
			}
		}
	}
	return t
}

// clusterTable is istioctl's cluster summary; names of the form
// direction|port|subset|fqdn are split into their columns.
func clusterTable(d *envoyDump) table {
	type row struct {
		fqdn, port, subset, direction, kind, dr string
	}
	var rows []row
	for _, cl := range d.Clusters {
		r := row{fqdn: cl.GetName(), port: "-", subset: "-", direction: "-", dr: istioConfigName(cl.GetMetadata())}
		if parts := strings.Split(cl.GetName(), "|"); len(parts) == 4 {
			r.direction, r.port, r.subset, r.fqdn = parts[0], parts[1], cmp.Or(parts[2], "-"), parts[3]
		}
		if ct := cl.GetClusterType(); ct != nil {
			r.kind = ct.GetName()
		} else {
			r.kind = cl.GetType().String()
		}
		rows = append(rows, r)
	}
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(strings.Compare(a.fqdn, b.fqdn), strings.Compare(a.subset, b.subset),
			cmp.Compare(atoiOr(a.port), atoiOr(b.port)), strings.Compare(a.direction, b.direction))
	})
	t := table{header: []string{"SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"}}
	for _, r := range rows {
		t.rows = append(t.rows, []string{r.fqdn, r.port, r.subset, r.direction, r.kind, r.dr})
	}
	return t
}

// endpointTable is istioctl's endpoint summary, sorted by cluster then
// address.
func endpointTable(d *envoyDump) table {
	type row struct{ addr, status, locality, cluster string }
	var rows []row
	for _, cla := range d.Endpoints {
		for _, lle := range cla.GetEndpoints() {
			loc := lle.GetLocality()
			locality := strings.Trim(strings.Join([]string{loc.GetRegion(), loc.GetZone(), loc.GetSubZone()}, "/"), "/")
			for _, lbe := range lle.GetLbEndpoints() {
				addr, port := socketAddress(lbe.GetEndpoint().GetAddress())
				status := lbe.GetHealthStatus().String()
				if status == "UNKNOWN" {
					// What Envoy assumes of an endpoint no health check has judged.
					status = "HEALTHY"
				}
				rows = append(rows, row{joinHostPort(addr, port), status, locality, cla.GetClusterName()})
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(strings.Compare(a.cluster, b.cluster), strings.Compare(a.addr, b.addr))
	})
	t := table{header: []string{"ENDPOINT", "STATUS", "LOCALITY", "CLUSTER"}}
	for _, r := range rows {
		t.rows = append(t.rows, []string{r.addr, r.status, r.locality, r.cluster})
	}
	return t
}

func joinHostPort(addr, port string) string {
	if port == "" || port == "-" {
		return addr
	}
	if strings.Contains(addr, ":") {
		return "[" + addr + "]:" + port
	}
	return addr + ":" + port
}

func atoiOr(s string) int {
	n := 0
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			return -1
		}
		n = n*10 + int(ch-'0')
	}
	return n
}

// describeDomains is istioctl's: the first domain, and how many more.
func describeDomains(domains []string) string {
	switch len(domains) {
	case 0:
		return ""
	case 1:
		return domains[0]
	}
	return fmt.Sprintf("%s + %d more...", domains[0], len(domains)-1)
}
