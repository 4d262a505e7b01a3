package proxy_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/zmesh/zmesh/api/workload/security"
)

// Live connections are decided again when policy changes: one that a new
// DENY, a new ALLOW that does not name it, or a STRICT PeerAuthentication
// refuses is reset at once, and the refusal is logged with the policy (or
// the PeerAuthentication) that ended it; one still allowed stays open and
// its access-log line names the ALLOW policy that let it in.
func TestPolicyChangeClosesLiveConnections(t *testing.T) {
	m := newMesh(t)
	a, b := m.newNode("node-a"), m.newNode("node-b")
	client := m.newPod(a, "demo", "client", "sleep")
	intruder := m.newPod(a, "other", "intruder", "default")
	plain := m.newPod(nil, "legacy", "plain", "default")
	server := m.newPod(b, "demo", "server", "echo")
	dst := server.echo(t, 8080)

	open := func(from *pod) net.Conn {
		t.Helper()
		c := from.dial(t, dst)
		if err := exchange(c, "hello from "+from.name); err != nil {
			t.Fatalf("%s: %v", from.name, err)
		}
		return c
	}
	fromClient, fromIntruder, fromPlain := open(client), open(intruder), open(plain)

	// closed waits until the peer ends c (reset or end of stream), with
	// a margin far beyond a prompt close; a connection left open would
	// run into the deadline.
	closed := func(c net.Conn, who string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s's connection is still open after the policy refusing it: %v", who, err)
		}
	}
	stillOpen := func(c net.Conn, who string) {
		t.Helper()
		if err := exchange(c, "still there, "+who); err != nil {
			t.Fatalf("%s's connection, still allowed, was broken: %v", who, err)
		}
	}
	revoked := func(key, value string) {
		t.Helper()
		waitFor(t, func() bool {
			for _, rec := range b.logLines("connection closed: policy no longer allows it") {
				if rec[key] == value {
					return true
				}
			}
			return false
		}, "the closed connection logged with "+key+"="+value)
		waitFor(t, func() bool {
			for _, rec := range b.logLines("connection complete") {
				if rec[key] == value && rec["response_flags"] == "DENY" {
					return true
				}
			}
			return false
		}, "the access-log line of the closed connection naming "+value)
	}

	// A DENY of the intruder's identity ends its connection only.
	match := func(mt *security.Match) []*security.Rule {
		return []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{mt}}}}}
	}
	m.pol = []*security.Authorization{{
		Name: "deny-other", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: match(&security.Match{Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "other"}}}}),
	}}
	m.push()
	closed(fromIntruder, "the intruder")
	revoked("authorization_policy", "demo/deny-other")
	stillOpen(fromClient, "client")
	stillOpen(fromPlain, "plain")

	// STRICT, as zmeshd sends it: the plaintext connection ends and the
	// log names the PeerAuthentication.
	strict := &security.Authorization{
		Name: "istio_converted_peer_authentication_default", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR,
		Action: security.Action_DENY,
		Rules:  match(&security.Match{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}),
	}
	m.pol = append(m.pol, strict)
	m.workload(server).AuthorizationPolicies = []string{"demo/" + strict.Name}
	m.push()
	closed(fromPlain, "the plaintext client")
	revoked("peer_authentication", "demo/default")
	stillOpen(fromClient, "client")

	// An ALLOW for the client: a new connection of the client is let in
	// by it, and its access-log line says so.
	m.pol = append(m.pol, &security.Authorization{
		Name: "allow-client", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Rules: match(&security.Match{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/demo/sa/sleep"}}}}),
	})
	m.push()
	stillOpen(fromClient, "client")
	again := open(client)
	again.Close()
	waitFor(t, func() bool {
		for _, rec := range b.logLines("connection complete") {
			if rec["authorization_policy"] == "demo/allow-client" && rec["level"] == "INFO" {
				return true
			}
		}
		return false
	}, "the access-log line of an allowed connection naming the ALLOW policy")

	// An ALLOW that no longer names the client ends its connection.
	m.pol[len(m.pol)-1].Rules = match(&security.Match{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/demo/sa/nobody"}}}})
	m.push()
	closed(fromClient, "the client")
	revoked("authorization_policy", "demo/allow-client")
}
