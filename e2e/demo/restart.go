package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// restartWithBrokenFile shows that a policy in force stays in force when
// zmeshd restarts while its file does not parse: with the DENY from alice
// written at path and enforced, a YAML syntax error is written into the
// file and zmeshd is restarted; the ztunnels resync with the new zmeshd
// (which serves the policy's last good version from its state dir) and
// alice is still refused.
func (m *mesh) restartWithBrokenFile(ctx context.Context, st story, path string, alice *pod, bobEcho netip.AddrPort) error {
	broken := strings.Replace(denyAliceYAML, `principals: ["cluster.local/ns/demo/sa/alice"]`, `principals: ["cluster.local/ns/demo/sa/alice"`, 1)
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		return err
	}
	start := time.Now()
	m.zmeshd.Stop()
	if err := m.zmeshd.Start(ctx); err != nil {
		return fmt.Errorf("restart zmeshd: %w", err)
	}
	var synced map[string]int
	if err := waitFor(ctx, func() bool {
		synced = m.synced(ctx)
		return synced["ztunnel"] == len(m.nodes)
	}); err != nil {
		return fmt.Errorf("the ztunnels did not resync with the restarted zmeshd: %v", synced)
	}
	// Each attempt is a new connection, decided on the config the ztunnel
	// holds after its resync.
	for range 5 {
		if _, err := call(ctx, alice, bobEcho, "after the restart"); err == nil {
			return errors.New("alice reached bob after zmeshd restarted with the DENY's file broken: the policy was withdrawn")
		}
		time.Sleep(100 * time.Millisecond)
	}
	st.say("restart", "wrote a YAML syntax error into %s and restarted zmeshd (pid %d): ztunnels resynced %s later, alice -> bob still refused (the last good version, kept in %s)",
		filepath.Base(path), m.zmeshd.Pid(), time.Since(start).Round(10*time.Millisecond), filepath.Join(filepath.Base(m.meshDir), ".zmesh-last-good"))
	return nil
}
