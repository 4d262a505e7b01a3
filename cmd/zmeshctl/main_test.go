package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

// now is the clock of every test run.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// zmeshctl runs the CLI in-process.
func zmeshctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	c := &cli{stdout: &out, stderr: &errOut, now: func() time.Time { return now }}
	code = c.run(t.Context(), args)
	return out.String(), errOut.String(), code
}

// fields splits a table into rows of whitespace-separated cells.
func fields(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestUsageAndExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		// inOutput is in stderr, or for help (exit 0) in stdout.
		inOutput string
	}{
		{nil, exitUsage, "Usage: zmeshctl <command>"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"help"}, 0, "Usage: zmeshctl <command>"},
		{[]string{"proxy-status", "-h"}, 0, "Usage: zmeshctl proxy-status"},
		{[]string{"help", "ztunnel-config"}, 0, "Usage: zmeshctl ztunnel-config"},
		{[]string{"proxy-status", "--bogus"}, exitUsage, "unknown flag: --bogus"},
		{[]string{"proxy-status", "-o", "xml"}, exitUsage, "want table, json or yaml"},
		{[]string{"proxy-status", "a", "b"}, exitUsage, "at most one proxy name"},
		{[]string{"ztunnel-config"}, exitUsage, "want one section"},
		{[]string{"ztunnel-config", "pods"}, exitUsage, `unknown section "pods"`},
		{[]string{"ztunnel-config", "workloads", "--ztunnel-admin", "ftp://x"}, exitUsage, `scheme "ftp"`},
		{[]string{"version", "extra"}, exitUsage, "version takes no arguments"},
		{[]string{"waypoint"}, exitUsage, "want one of its commands"},
		{[]string{"waypoint", "frob"}, exitUsage, `unknown command "frob" for "zmeshctl waypoint"`},
		{[]string{"waypoint", "generate", "--for", "pods"}, exitUsage, `--for "pods": want one of all, none, service, workload`},
		{[]string{"waypoint", "generate", "--name", "none"}, exitUsage, `"none" is reserved`},
		{[]string{"waypoint", "delete"}, exitUsage, "want waypoint names, or --all"},
		{[]string{"waypoint", "delete", "a", "--all"}, exitUsage, "not both"},
		{[]string{"waypoint", "list", "extra"}, exitUsage, "takes no arguments"},
		{[]string{"proxy-config", "routes", "a", "b"}, exitUsage, "at most one waypoint"},
		{[]string{"proxy-config", "secrets"}, exitUsage, `unknown command "secrets"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := zmeshctl(t, tc.args...)
			out := stderr
			if tc.code == 0 {
				out = stdout
			}
			if code != tc.code || !strings.Contains(out, tc.inOutput) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout, stderr, tc.code, tc.inOutput)
			}
		})
	}
}

func TestUnreachableEndpointIsOneClearLine(t *testing.T) {
	addr := closedAddr(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ztunnel-config", "workloads", "--ztunnel-admin", addr},
			"error: cannot reach ztunnel admin at " + addr + ": connection refused (is ztunnel running on this node? use --ztunnel-admin)\n"},
		{[]string{"proxy-status", "--zmeshd", "http://" + addr},
			"error: cannot reach zmeshd at http://" + addr + ": connection refused (is zmeshd running, and its --monitoring-address reachable from here? port-forward it or use --zmeshd)\n"},
	} {
		stdout, stderr, code := zmeshctl(t, tc.args...)
		if code != exitFailure || stderr != tc.want || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr\n%q\nwant exit 1 and\n%q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

func TestFlagsAfterArgumentsAndDoubleDash(t *testing.T) {
	addr := closedAddr(t)
	// Flags may follow the arguments; after "--" everything is an argument.
	_, stderr, code := zmeshctl(t, "ztunnel-config", "--ztunnel-admin", addr, "--", "workloads")
	if code != exitFailure || !strings.Contains(stderr, "cannot reach ztunnel admin at "+addr) {
		t.Errorf("exit %d, stderr %q; want the section parsed after --", code, stderr)
	}
	_, stderr, code = zmeshctl(t, "ztunnel-config", "--", "--node")
	if code != exitUsage || !strings.Contains(stderr, `unknown section "--node"`) {
		t.Errorf("exit %d, stderr %q; want --node taken as a section", code, stderr)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                   "0s",
		45 * time.Second:               "45s",
		5*time.Minute + 3*time.Second:  "5m3s",
		42 * time.Minute:               "42m",
		3*time.Hour + 5*time.Minute:    "3h5m",
		20 * time.Hour:                 "20h",
		3*24*time.Hour + 4*time.Hour:   "3d4h",
		12*24*time.Hour + 11*time.Hour: "12d",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
}
