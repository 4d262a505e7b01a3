package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/zmesh/zmesh/internal/version"
)

const versionHelp = `
Prints zmeshctl's version: the module version and, when built from a git
checkout, the commit and its time. With --zmeshd it also asks zmeshd
(GET /version on its monitoring address).`

// versionInfo is a binary's version as its build info records it.
type versionInfo = version.Info

// buildVersion reads the running binary's version.
func buildVersion() versionInfo { return version.Get() }

// versions is what `zmeshctl version` reports. Server is nil when zmeshd
// was not asked or could not say; ServerNote then says which.
type versions struct {
	Client     versionInfo  `json:"zmeshctl"`
	Server     *versionInfo `json:"zmeshd,omitempty"`
	ServerNote string       `json:"zmeshdNote,omitempty"`
}

func (c *cli) versionCommand() *cobra.Command {
	var out format
	cmd := &cobra.Command{
		Use:   "version",
		Short: "show zmeshctl's version (and zmeshd's, with --zmeshd)",
		Long:  help(versionHelp),
	}
	addOutputFlag(cmd.Flags(), &out)
	ep := endpointFlags(cmd.Flags(), "zmeshd", "http://127.0.0.1:15014", "zmeshd",
		"is zmeshd running, and its --monitoring-address reachable from here? port-forward it or use --zmeshd")
	cmd.RunE = func(cmd *cobra.Command, pos []string) error {
		if len(pos) > 0 {
			return usagef("version takes no arguments")
		}
		e, err := ep()
		if err != nil {
			return err
		}
		return c.version(cmd.Context(), e, out, cmd.Flags().Changed("zmeshd"))
	}
	return cmd
}

func (c *cli) version(ctx context.Context, e endpoint, out format, queried bool) error {
	v := versions{Client: buildVersion(), ServerNote: "(not queried)"}
	var serverErr error
	if queried {
		v.Server, v.ServerNote, serverErr = serverVersion(ctx, e)
	}
	if serverErr != nil && out != "" {
		return serverErr
	}
	if out != "" {
		return out.write(c.stdout, v)
	}
	fmt.Fprintf(c.stdout, "zmeshctl: %s\n", v.Client)
	if serverErr != nil {
		// The client's version is printed; the failure still fails.
		return serverErr
	}
	if v.Server != nil {
		fmt.Fprintf(c.stdout, "zmeshd: %s\n", v.Server)
	} else {
		fmt.Fprintf(c.stdout, "zmeshd: %s\n", v.ServerNote)
	}
	return nil
}

// serverVersion asks zmeshd. A 404 is not an error: zmeshd does not serve
// its version yet, and the note says so.
func serverVersion(ctx context.Context, e endpoint) (*versionInfo, string, error) {
	body, err := e.get(ctx, "/version")
	if errors.Is(err, errNotFound) {
		return nil, fmt.Sprintf("unknown: zmeshd at %s does not report its version (GET /version: 404 Not Found)", e.addr), nil
	}
	if err != nil {
		return nil, "", err
	}
	var v versionInfo
	if err := json.Unmarshal(body, &v); err != nil || v.Version == "" {
		return nil, "", fmt.Errorf("zmeshd at %s answered GET /version with something that is not a version (want JSON with \"version\"): %.60q", e.addr, body)
	}
	return &v, "", nil
}
