package main

import (
	"strings"
	"testing"
)

func TestFlagsNameTheProblem(t *testing.T) {
	cases := []struct {
		args []string
		want string // "" = valid
	}{
		{[]string{"--local-config", "m.yaml", "--ca-address", "127.0.0.1:1"}, "--node"},
		{[]string{"--node", "n", "--ca-address", "127.0.0.1:1"}, "exactly one of --local-config and --xds-address"},
		{[]string{"--node", "n", "--local-config", "m.yaml", "--xds-address", "x:1"}, "exactly one of"},
		{[]string{"--node", "n", "--local-config", "m.yaml"}, "--ca-address"},
		{[]string{"--node", "n", "--xds-address", "zmeshd:15012"}, ""},
		{[]string{"--node", "n", "--local-config", "m.yaml", "--ca-address", "127.0.0.1:1"}, ""},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-max-conns-per-peer", "0"}, "--hbone-max-conns-per-peer"},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-idle-timeout", "-1s"}, "--hbone-idle-timeout"},
		{[]string{"--node", "n", "--xds-address", "x:1", "--hbone-idle-timeout", "2m", "--hbone-max-streams-per-peer", "100"}, ""},
	}
	t.Setenv("NODE_NAME", "")
	for _, c := range cases {
		f, err := parseFlags(c.args)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: err %v, want one mentioning %q", c.args, err, c.want)
		case c.want == "" && f.caAddr == "":
			t.Errorf("%v: no CA address", c.args)
		}
	}
}
