package plugin

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupBuilt()
	os.Exit(code)
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, conf, wantErr string
		check               func(*Config) bool
	}{
		{name: "defaults", conf: `{"cniVersion":"1.0.0","name":"n","type":"zmesh-cni"}`,
			check: func(c *Config) bool {
				return c.AgentSocket == DefaultAgentSocket && c.FailurePolicy == FailClosed &&
					len(c.ExcludeNamespaces) == 1 && c.ExcludeNamespaces[0] == "kube-system" && c.AgentTimeoutSeconds == 60
			}},
		{name: "explicit", conf: `{"cniVersion":"0.4.0","name":"n","type":"zmesh-cni","agent_socket":"/run/z.sock","failure_policy":"allow","exclude_namespaces":[],"agent_timeout_seconds":5}`,
			check: func(c *Config) bool {
				return c.AgentSocket == "/run/z.sock" && c.FailurePolicy == FailOpen && len(c.ExcludeNamespaces) == 0 && c.timeout().Seconds() == 5
			}},
		{name: "with prevResult", conf: `{"cniVersion":"1.0.0","name":"n","type":"zmesh-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}}`,
			check: func(c *Config) bool { return c.PrevResult != nil }},
		{name: "not json", conf: `{`, wantErr: "parse network configuration"},
		{name: "no version", conf: `{"name":"n"}`, wantErr: "cniVersion: missing"},
		{name: "old version", conf: `{"cniVersion":"0.3.1","name":"n"}`, wantErr: `cniVersion "0.3.1"`},
		{name: "relative socket", conf: `{"cniVersion":"1.0.0","agent_socket":"cni.sock"}`, wantErr: "agent_socket"},
		{name: "bad policy", conf: `{"cniVersion":"1.0.0","failure_policy":"maybe"}`, wantErr: "failure_policy"},
		{name: "bad timeout", conf: `{"cniVersion":"1.0.0","agent_timeout_seconds":-1}`, wantErr: "agent_timeout_seconds"},
		{name: "bad prevResult", conf: `{"cniVersion":"1.0.0","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"nope"}]}}`, wantErr: "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tc.conf))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(`{"cniVersion":"1.0.0","name":"n","type":"zmesh-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}}`)
	f.Add(`{"cniVersion":"0.4.0","agent_socket":"/x","exclude_namespaces":["a"],"failure_policy":"allow"}`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseConfig([]byte(s))
		if err != nil {
			return
		}
		if c.FailurePolicy != FailClosed && c.FailurePolicy != FailOpen {
			t.Fatalf("accepted failure policy %q", c.FailurePolicy)
		}
		if !strings.HasPrefix(c.AgentSocket, "/") {
			t.Fatalf("accepted relative socket %q", c.AgentSocket)
		}
	})
}
