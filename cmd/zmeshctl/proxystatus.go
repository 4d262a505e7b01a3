package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/zmesh/zmesh/controlplane/xds"
)

const proxyStatusHelp = `
Lists the proxies connected to zmeshd (GET /debug/syncz on its monitoring
address) and, per resource type, whether each has acknowledged zmeshd's
current config:
  SYNCED    acked the server's current version
  STALE     a response is not acked yet, or the server has moved on
  NACKED    rejected the last response (the reason is printed below)
  NOT SENT  subscribed, nothing sent yet
  -         not subscribed
ACKED-VERSION is the version each proxy acked, per state column, joined by
"/". With NAME, only the proxy of that id or node is shown.`

type typeColumn struct{ typeURL, column string }

// typeColumns names the columns of the types ztunnel subscribes to; any
// other type a proxy subscribes to (waypoints' Envoy types) gets a column
// named after its message.
var typeColumns = []typeColumn{
	{xds.TypeAddress, "ADDRESSES"},
	{xds.TypeAuthorization, "AUTHORIZATIONS"},
}

func (c *cli) proxyStatusCommand() *cobra.Command {
	var out format
	cmd := &cobra.Command{
		Use:   "proxy-status [NAME]",
		Short: "show the proxies zmeshd serves and whether they are in sync",
		Long:  help(proxyStatusHelp),
	}
	addOutputFlag(cmd.Flags(), &out)
	ep := endpointFlags(cmd.Flags(), "zmeshd", "http://127.0.0.1:15014", "zmeshd",
		"is zmeshd running, and its --monitoring-address reachable from here? port-forward it or use --zmeshd")
	cmd.RunE = func(cmd *cobra.Command, pos []string) error {
		if len(pos) > 1 {
			return usagef("want at most one proxy name, got %d", len(pos))
		}
		e, err := ep()
		if err != nil {
			return err
		}
		return c.proxyStatus(cmd.Context(), e, out, pos)
	}
	return cmd
}

func (c *cli) proxyStatus(ctx context.Context, e endpoint, out format, pos []string) error {
	body, err := e.get(ctx, "/debug/syncz")
	if err != nil {
		return err
	}
	var proxies []xds.ProxyStatus
	if err := json.Unmarshal(body, &proxies); err != nil {
		return fmt.Errorf("zmeshd at %s: decode /debug/syncz: %w", e.addr, err)
	}
	if len(pos) == 1 {
		proxies = slices.DeleteFunc(proxies, func(p xds.ProxyStatus) bool { return p.ID != pos[0] && p.Node != pos[0] })
		if len(proxies) == 0 {
			return fmt.Errorf("no proxy %q is connected to zmeshd at %s", pos[0], e.addr)
		}
	}
	if out != "" {
		return out.write(c.stdout, proxies)
	}
	if err := proxyTable(proxies, c.now()).write(c.stdout); err != nil {
		return err
	}
	writeNacks(c.stderr, proxies)
	return nil
}

func proxyTable(proxies []xds.ProxyStatus, now time.Time) table {
	cols := slices.Clone(typeColumns)
	for _, p := range proxies {
		for _, ts := range p.Types {
			if !slices.ContainsFunc(cols, func(c typeColumn) bool { return c.typeURL == ts.TypeURL }) {
				cols = append(cols, typeColumn{ts.TypeURL, columnName(ts.TypeURL)})
			}
		}
	}
	slices.SortFunc(cols[len(typeColumns):], func(a, b typeColumn) int { return strings.Compare(a.typeURL, b.typeURL) })

	t := table{header: []string{"NAME", "NODE"}}
	for _, col := range cols {
		t.header = append(t.header, col.column)
	}
	t.header = append(t.header, "ACKED-VERSION", "AGE")
	for _, p := range proxies {
		row := []string{p.ID, orNone(p.Node)}
		var versions []string
		for _, col := range cols {
			i := slices.IndexFunc(p.Types, func(ts xds.TypeStatus) bool { return ts.TypeURL == col.typeURL })
			if i < 0 {
				row = append(row, "-")
				versions = append(versions, "-")
				continue
			}
			row = append(row, p.Types[i].State)
			versions = append(versions, cmp.Or(p.Types[i].AckedVersion, "-"))
		}
		row = append(row, strings.Join(versions, "/"), age(now.Sub(p.Since)))
		t.rows = append(t.rows, row)
	}
	return t
}

// columnName names a column after a type's message:
// ".../envoy.config.cluster.v3.Cluster" → "CLUSTER".
func columnName(typeURL string) string {
	name := typeURL[strings.LastIndexAny(typeURL, "/.")+1:]
	return strings.ToUpper(name)
}

func writeNacks(w io.Writer, proxies []xds.ProxyStatus) {
	for _, p := range proxies {
		for _, ts := range p.Types {
			if ts.State == "NACKED" {
				fmt.Fprintf(w, "warning: %s rejected %s version %s: %s\n", p.ID, ts.TypeURL, cmp.Or(ts.SentVersion, "?"), ts.Error)
			}
		}
	}
}

// age is kubectl's short form: 45s, 5m3s, 42m, 3h5m, 20h, 3d4h, 12d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 10*time.Minute:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 3*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 8*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d < 8*24*time.Hour:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
	return fmt.Sprintf("%dd", int(d.Hours())/24)
}
