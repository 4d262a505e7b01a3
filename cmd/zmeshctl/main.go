// Command zmeshctl inspects a running mesh, istioctl-style: what a ztunnel
// holds (ztunnel-config, from its admin port's /config_dump), which proxies
// zmeshd serves and whether they acknowledged its config (proxy-status,
// from /debug/syncz), and versions. Output is a table by default and
// -o json|yaml everywhere.
//
// It talks plain HTTP to the endpoints it is pointed at and must not
// import Kubernetes client packages: reaching a pod is kubectl
// port-forward's job, so the binary stays small and works off-cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit codes, kubectl's: 1 a command failed, 2 it was called wrongly.
const (
	exitFailure = 1
	exitUsage   = 2
)

// command is one subcommand.
type command struct {
	name, summary string
	run           func(c *cli, ctx context.Context, args []string) error
}

var commands = []command{
	{"ztunnel-config", "show a ztunnel's workloads, services, policies and certificates", (*cli).ztunnelConfig},
	{"proxy-status", "show the proxies zmeshd serves and whether they are in sync", (*cli).proxyStatus},
	{"version", "show zmeshctl's version (and zmeshd's, with --zmeshd)", (*cli).version},
}

// cli holds what a run of zmeshctl needs from the outside world, so that
// tests can run it in-process.
type cli struct {
	stdout, stderr io.Writer
	now            func() time.Time
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := (&cli{stdout: os.Stdout, stderr: os.Stderr, now: time.Now}).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run runs one zmeshctl invocation and returns its exit code.
func (c *cli) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		c.usage(c.stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			// "zmeshctl help proxy-status" is "zmeshctl proxy-status -h".
			return c.run(ctx, []string{args[1], "-h"})
		}
		c.usage(c.stdout)
		return 0
	}
	for _, cmd := range commands {
		if cmd.name != name {
			continue
		}
		err := cmd.run(c, ctx, args[1:])
		var ue usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errFlagParse):
			// The flag package has printed the error and the usage.
			return exitUsage
		case errors.As(err, &ue):
			fmt.Fprintf(c.stderr, "error: %s\nSee 'zmeshctl %s -h' for usage.\n", ue.msg, name)
			return exitUsage
		}
		fmt.Fprintf(c.stderr, "error: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(c.stderr, "error: unknown command %q\n\n", name)
	c.usage(c.stderr)
	return exitUsage
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprintln(w, "zmeshctl inspects a zmesh ambient mesh.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: zmeshctl <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'zmeshctl <command> -h' for a command's flags.")
}

// usageError is a command called wrongly: run prints it with a pointer to
// the usage and exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// errFlagParse marks a flag error the flag package has already reported.
var errFlagParse = errors.New("invalid flags")

// newFlagSet returns a flag set for a command whose usage line is synopsis
// (after "zmeshctl") and whose help text is help.
func (c *cli) newFlagSet(name, synopsis, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: zmeshctl %s\n\n%s\n\nFlags:\n", synopsis, strings.TrimSpace(help))
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, allowing flags after positional arguments
// ("ztunnel-config workloads --node a"), which the flag package alone
// does not; everything after "--" is positional. It returns the
// positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errFlagParse
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
