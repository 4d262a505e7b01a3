package main

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/cobra"
)

// ztunnelAdminPort is where a ztunnel pod serves /config_dump, on its
// loopback (the chart's --admin-address).
const ztunnelAdminPort = 15000

// sections of ztunnel-config, with the names istioctl accepts for them.
var sections = []struct {
	name    string
	aliases []string
}{
	{"workloads", []string{"workload", "w"}},
	{"services", []string{"service", "svc", "s"}},
	{"policies", []string{"policy"}},
	{"certificates", []string{"certificate", "certs", "cert", "secrets", "secret"}},
	{"all", nil},
}

const ztunnelConfigHelp = `
Reads a ztunnel's configuration from its admin endpoint (GET /config_dump)
and shows one section, or all of them.

The admin port listens on the ztunnel pod's localhost only. With --node
and without --ztunnel-admin, zmeshctl reaches the admin port of the ztunnel
pod on that node (label app=ztunnel in --istio-namespace) through the API
server's port-forward, as istioctl does. Otherwise it reads --ztunnel-admin:
run zmeshctl on the node, or forward the port first, e.g.
  kubectl -n istio-system port-forward pod/ztunnel-xxxxx 15000:15000

Sections: workloads (w), services (svc), policies, certificates (certs), all.
--node and --namespace filter workloads; --namespace also services and
policies. A service's ENDPOINTS count every workload the ztunnel knows that
lists it, filtered or not, as healthy/total.

-o json|yaml prints the resources as the ztunnel sent them (protobuf JSON
of istio.workload.Workload, istio.workload.Service and
istio.security.Authorization: addresses are base64 bytes).`

func (c *cli) ztunnelConfigCommand() *cobra.Command {
	var out format
	var f dumpFilter
	cmd := &cobra.Command{
		Use:   "ztunnel-config workloads|services|policies|certificates|all",
		Short: "show a ztunnel's workloads, services, policies and certificates",
		Long:  help(ztunnelConfigHelp),
	}
	addOutputFlag(cmd.Flags(), &out)
	ep := endpointFlags(cmd.Flags(), "ztunnel-admin", "127.0.0.1:15000", "ztunnel admin",
		"is ztunnel running on this node? use --ztunnel-admin")
	cmd.Flags().StringVar(&f.node, "node", "", "the node whose ztunnel to ask (through port-forward, unless --ztunnel-admin is set); show only workloads on this node")
	istioNamespace := cmd.Flags().String("istio-namespace", defaultInstall, "namespace of the ztunnel DaemonSet, for --node")
	// A filter here, not the namespace to work in: it shadows the global
	// -n, and an empty value shows every namespace.
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", "show only workloads, services and policies of this namespace")
	cmd.RunE = func(cmd *cobra.Command, pos []string) error {
		if len(pos) != 1 {
			return usagef("want one section (workloads, services, policies, certificates or all), got %d arguments", len(pos))
		}
		section := ""
		for _, s := range sections {
			if pos[0] == s.name || slices.Contains(s.aliases, pos[0]) {
				section = s.name
			}
		}
		if section == "" {
			return usagef("unknown section %q: want workloads, services, policies, certificates or all", pos[0])
		}
		e, err := ep()
		if err != nil {
			return err
		}
		if f.node != "" && !cmd.Flags().Changed("ztunnel-admin") {
			cl, err := c.kube.clients()
			if err != nil {
				return err
			}
			addr, stop, err := c.forwardToZtunnel(cmd.Context(), cl, *istioNamespace, f.node, ztunnelAdminPort)
			if err != nil {
				return err
			}
			defer stop()
			e.what = "ztunnel admin on node " + f.node
			e.addr, e.base = addr+" (port-forward to the ztunnel of node "+f.node+")", "http://"+addr
		}
		return c.ztunnelConfig(cmd.Context(), e, out, section, f)
	}
	return cmd
}

func (c *cli) ztunnelConfig(ctx context.Context, e endpoint, out format, section string, f dumpFilter) error {
	body, err := e.get(ctx, "/config_dump")
	if err != nil {
		return err
	}
	d, err := decodeDump(body)
	if err != nil {
		return fmt.Errorf("ztunnel admin at %s: %w", e.addr, err)
	}
	if out != "" {
		return out.write(c.stdout, d.export(section, f))
	}
	return c.writeSections(d, section, f)
}

// writeSections prints section's tables ("all": each in turn, as
// istioctl does), then, on stderr, certificate errors the table only
// flags.
func (c *cli) writeSections(d *dump, section string, f dumpFilter) error {
	now := c.now()
	tables := []struct {
		name string
		t    func() table
	}{
		{"workloads", func() table { return workloadTable(d, f) }},
		{"services", func() table { return serviceTable(d, f) }},
		{"policies", func() table { return policyTable(d, f) }},
		{"certificates", func() table { return certificateTable(d, now) }},
	}
	first := true
	for _, t := range tables {
		if section != "all" && section != t.name {
			continue
		}
		if !first {
			fmt.Fprintln(c.stdout)
		}
		first = false
		if err := t.t().write(c.stdout); err != nil {
			return err
		}
		if t.name == "certificates" {
			writeCertErrors(c.stderr, d)
		}
	}
	return nil
}

func writeCertErrors(w io.Writer, d *dump) {
	for _, cert := range d.Certificates {
		if cert.LastError != "" {
			fmt.Fprintf(w, "warning: certificate %s: last fetch failed: %s\n", cert.Identity, cert.LastError)
		}
	}
}
