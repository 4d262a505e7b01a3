// Command zmeshctl operates a running mesh, istioctl-style: what a ztunnel
// holds (ztunnel-config, from its admin port's /config_dump), what a
// waypoint runs (proxy-config, from its /config_dump), which proxies zmeshd
// serves and whether they acknowledged its config (proxy-status, from
// /debug/syncz), the waypoints of a namespace (waypoint apply, list,
// status, delete, generate), versions, and the install of zmesh itself
// (install and upgrade, uninstall, verify-install, precheck: install.go),
// and a local mesh with no cluster for a directory of YAML (local up,
// status, exec: local.go).
// Output is a table by default and -o json|yaml where a command reads a
// dump.
//
// The Kubernetes commands load the kubeconfig as kubectl does (--kubeconfig,
// $KUBECONFIG, ~/.kube/config; --context; -n/--namespace). The inspection
// commands talk plain HTTP to the endpoint they are pointed at and need no
// cluster access.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// Exit codes, kubectl's: 1 a command failed, 2 it was called wrongly.
const (
	exitFailure = 1
	exitUsage   = 2
)

// cli holds what a run of zmeshctl needs from the outside world, so that
// tests can run it in-process.
type cli struct {
	stdout, stderr io.Writer
	now            func() time.Time
	kube           kubeFlags
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := (&cli{stdout: os.Stdout, stderr: os.Stderr, now: time.Now}).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run runs one zmeshctl invocation and returns its exit code.
func (c *cli) run(ctx context.Context, args []string) int {
	root := c.rootCommand()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.stderr, "error: %s\nSee '%s -h' for usage.\n", ue.msg, cmd.CommandPath())
		return exitUsage
	}
	fmt.Fprintf(c.stderr, "error: %v\n", err)
	return exitFailure
}

// usageTemplate is cobra's, with the usage line on the "Usage:" line
// and a group's usage naming its commands.
const usageTemplate = `Usage: {{if .HasAvailableSubCommands}}{{.CommandPath}} <command> [flags]{{else}}{{.UseLine}}{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}

Commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Run '{{.CommandPath}} <command> -h' for a command's flags.{{end}}
`

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "zmeshctl",
		Short: "zmeshctl operates a zmesh ambient mesh.",
		// A bare "zmeshctl" is a usage error, not a request for help.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(c.stderr)
			cmd.Usage()
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return usagef("want a command")
		},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	c.kube.register(root)
	root.AddCommand(
		c.ztunnelConfigCommand(),
		c.proxyConfigCommand(),
		c.proxyStatusCommand(),
		c.waypointCommand(),
		c.versionCommand(),
		c.installCommand(),
		c.uninstallCommand(),
		c.verifyInstallCommand(),
		c.precheckCommand(),
		c.localCommand(),
	)
	// "zmeshctl completion bash|zsh|fish|powershell" prints the shell's
	// completion script; commands, flags and their values complete.
	root.InitDefaultCompletionCmd()
	// Subcommands refuse arguments they do not take as usage errors, and
	// an unknown subcommand of a group says so.
	for _, cmd := range root.Commands() {
		if cmd.HasSubCommands() {
			cmd.Args = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
				}
				return nil
			}
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				cmd.SetOut(c.stderr)
				cmd.Usage()
				return usagef("want one of its commands")
			}
		}
	}
	return root
}

// usageError is a command called wrongly: run prints it with a pointer to
// the usage and exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// help formats a command's long help from an indented raw string.
func help(s string) string { return strings.TrimSpace(s) }
