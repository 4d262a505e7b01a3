package main

import (
	"strings"
	"testing"
)

// TestCompletion: each shell gets a completion script, and the hidden
// __complete command the scripts call completes commands and flags.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash":       "__start_zmeshctl",
		"zsh":        "#compdef zmeshctl",
		"fish":       "complete -c zmeshctl",
		"powershell": "Register-ArgumentCompleter",
	} {
		out, errOut, code := zmeshctl(t, "completion", shell)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("completion %s: exit %d, stderr %q; script lacks %q", shell, code, errOut, want)
		}
	}
	out, _, code := zmeshctl(t, "__complete", "ztun")
	if code != 0 || !strings.Contains(out, "ztunnel-config") {
		t.Errorf("__complete ztun: exit %d, %q; want ztunnel-config offered", code, out)
	}
	out, _, _ = zmeshctl(t, "__complete", "proxy-status", "--")
	if !strings.Contains(out, "--output") {
		t.Errorf("__complete proxy-status --: %q; want its --output flag", out)
	}
	if _, errOut, code := zmeshctl(t, "completion", "tcsh"); code == 0 {
		t.Errorf("completion tcsh: exit 0 (%q), want a usage error", errOut)
	}
}
