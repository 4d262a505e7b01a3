package l4

import (
	"strings"
	"testing"
	"time"
)

// TestBadInput: malformed or pointless policies get a clear error or status
// condition, and traffic keeps to the last good configuration.
func TestBadInput(t *testing.T) {
	apply(t, "badinput.yaml", "bad")
	pods := waitPods(t, "bad", 3)
	client, intruder, server := pods["client"], pods["intruder"], pods["server"]
	eventually(t, 15*time.Second, "the pods captured", func() bool {
		return redirected(t, "bad", "client") && redirected(t, "bad", "intruder") && redirected(t, "bad", "server")
	})
	dst := server.Addr(echoPort)
	reach(t, client, dst, true, "good config (ALLOW client): client -> server")
	reach(t, intruder, dst, false, "good config (ALLOW client): intruder -> server")

	out, err := mesh.Kubectl(t.Context(), "apply", "-f", "../testdata/bad-input-typo.yaml")
	if err == nil {
		t.Fatalf("action: ALOW was accepted: %s", out)
	}
	t.Logf("$ kubectl apply -f e2e/testdata/bad-input-typo.yaml: refused: %s", lineWith(out, "ALOW"))
	if !strings.Contains(out, "ALOW") {
		t.Errorf("the refusal does not name the bad value: %s", out)
	}

	condition := func(name string) string {
		var got string
		eventually(t, 15*time.Second, name+" carrying a status condition", func() bool {
			out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", "bad", name, "-o",
				"jsonpath={.status.conditions[0].type}={.status.conditions[0].status} ({.status.conditions[0].reason}): {.status.conditions[0].message}")
			got = out
			return err == nil && strings.Contains(out, "=") && len(out) > 3
		})
		return got
	}
	kubectl(t, "apply", "-f", "../testdata/bad-input-nomatch.yaml")
	st := condition("deny-all-of-nothing")
	t.Logf("deny-all-of-nothing status: %s", st)
	if !strings.Contains(st, "matches no running pod") {
		t.Errorf("deny-all-of-nothing: status %q, want it to say the selector matches no pod", st)
	}
	kubectl(t, "apply", "-f", "../testdata/bad-input-audit.yaml")
	st = condition("audit-server")
	t.Logf("audit-server status: %s", st)
	if !strings.Contains(st, "=False") || !strings.Contains(st, "AUDIT") {
		t.Errorf("audit-server: status %q, want False naming AUDIT", st)
	}
	kubectl(t, "apply", "-f", "../testdata/bad-input-principal.yaml")
	st = condition("allow-by-uri")
	t.Logf("allow-by-uri status: %s", st)
	if !strings.Contains(st, "=False") || !strings.Contains(st, "principals") {
		t.Errorf("allow-by-uri: status %q, want False naming the principals field", st)
	}
	time.Sleep(500 * time.Millisecond)
	for range 10 {
		if _, _, err := client.Echo(t.Context(), dst); err != nil {
			t.Fatalf("after the bad input, client -> server: %v", err)
		}
		if _, _, err := intruder.Echo(t.Context(), dst); err == nil {
			t.Fatal("after the bad input, intruder -> server was answered")
		}
	}
	t.Log("after the bad input: client -> server 10/10 answered, intruder 10/10 refused (the last good config holds)")
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(s)
}
