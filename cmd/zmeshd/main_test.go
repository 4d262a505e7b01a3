package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// The unauthenticated ports (plaintext xDS, which hands out the whole
// mesh, and the monitoring port with /debug/syncz, which lists every
// proxy) listen on loopback unless told otherwise, and --help says so.
func TestUnauthenticatedPortsDefaultToLoopback(t *testing.T) {
	f, err := parseFlags([]string{"--config-dir", t.TempDir(), "--tokens-file", "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	_, fs := newFlags()
	var help strings.Builder
	fs.SetOutput(&help)
	fs.PrintDefaults()
	for name, addr := range map[string]string{"xds-address": f.xdsAddr, "monitoring-address": f.monAddr} {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("--%s default %q: %v", name, addr, err)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			t.Errorf("--%s defaults to %q: not a loopback address", name, addr)
		}
		if usage := fs.Lookup(name).Usage; !strings.Contains(usage, "loopback by default") {
			t.Errorf("--%s help does not say it binds to loopback by default: %q", name, usage)
		}
		if !strings.Contains(help.String(), "(default \""+addr+"\")") {
			t.Errorf("--help does not show --%s's default %q", name, addr)
		}
	}
}
