package l4

import (
	"strings"
	"testing"
	"time"
)

// TestAuthorization: L4 AuthorizationPolicy as ztunnel enforces it.
func TestAuthorization(t *testing.T) {
	apply(t, "authz.yaml", "authz", "authz-other")
	pods := waitPods(t, "authz", 3)
	other := waitPods(t, "authz-other", 1)
	server, sleep, notsleep, foreign := pods["server"], pods["sleep"], pods["notsleep"], other["foreign"]
	eventually(t, 15*time.Second, "the four pods captured", func() bool {
		return redirected(t, "authz", "server") && redirected(t, "authz", "sleep") &&
			redirected(t, "authz", "notsleep") && redirected(t, "authz-other", "foreign")
	})
	dst := server.Addr(echoPort)
	reach(t, sleep, dst, true, "no policy: sleep -> server")
	reach(t, notsleep, dst, true, "no policy: notsleep (same node as server) -> server")

	kubectl(t, "apply", "-f", "../testdata/authz-allow-nothing.yaml")
	reach(t, sleep, dst, false, "allow-nothing: sleep -> server")
	reach(t, notsleep, dst, false, "allow-nothing: notsleep -> server")
	reach(t, foreign, dst, false, "allow-nothing: foreign -> server")

	kubectl(t, "apply", "-f", "../testdata/authz-allow-sleep.yaml")
	reach(t, sleep, dst, true, "ALLOW principal cluster.local/ns/authz/sa/sleep: sleep -> server")
	reach(t, notsleep, dst, false, "ALLOW principal sleep: notsleep (another service account) -> server")
	reach(t, foreign, dst, false, "ALLOW principal sleep: foreign -> server")

	kubectl(t, "apply", "-f", "../testdata/authz-allow-namespace.yaml")
	reach(t, foreign, dst, true, "ALLOW namespaces [authz-other]: foreign -> server")
	reach(t, notsleep, dst, false, "ALLOW namespaces [authz-other]: notsleep -> server")

	kubectl(t, "apply", "-f", "../testdata/authz-deny-sleep.yaml")
	reach(t, sleep, dst, false, "DENY principal sleep beside ALLOW principal sleep: sleep -> server")
	reach(t, foreign, dst, true, "DENY principal sleep: foreign -> server still allowed")

	// Only the L7 rule left: it cannot match without a waypoint.
	kubectl(t, "delete", "authorizationpolicy", "-n", "authz", "allow-nothing", "server-from-sleep", "server-from-authz-other", "deny-sleep")
	reach(t, notsleep, dst, true, "no policy again: notsleep -> server")
	kubectl(t, "apply", "-f", "../testdata/authz-l7-get.yaml")
	reach(t, sleep, dst, false, "ALLOW sleep with methods [GET], no waypoint (fails closed): sleep -> server")
	reach(t, notsleep, dst, false, "ALLOW with methods [GET]: notsleep -> server")
	var status string
	eventually(t, 15*time.Second, "server-get-only's status condition naming a waypoint", func() bool {
		out, err := mesh.Kubectl(t.Context(), "get", "authorizationpolicy", "-n", "authz", "server-get-only", "-o",
			"jsonpath={.status.conditions[0].type}={.status.conditions[0].status} ({.status.conditions[0].reason}): {.status.conditions[0].message}")
		status = out
		return err == nil && strings.Contains(out, "=False") && strings.Contains(out, "waypoint")
	})
	t.Logf("kubectl get authorizationpolicy server-get-only: status %s", status)
}
