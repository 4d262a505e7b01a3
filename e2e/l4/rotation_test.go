package l4

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/ztunnel/admin"
)

// TestCertificateRotation: workload certificates live cluster.CertTTL, so
// both ztunnels renew the client's and the server's at about half-life
// while the client keeps opening connections; none fails.
func TestCertificateRotation(t *testing.T) {
	apply(t, "rotation.yaml", "rotate")
	pods := waitPods(t, "rotate", 2)
	client, server := pods["client"], pods["server"]
	eventually(t, 15*time.Second, "client and server captured", func() bool {
		return redirected(t, "rotate", "client") && redirected(t, "rotate", "server")
	})
	dst := server.Addr(echoPort)
	reach(t, client, dst, true, "client -> server")

	clientID, serverID := "spiffe://cluster.local/ns/rotate/sa/client", "spiffe://cluster.local/ns/rotate/sa/default"
	c0, s0 := certOf(t, client.Node, clientID), certOf(t, server.Node, serverID)
	l := cluster.StartLoad(client, dst, 20*time.Millisecond, 3*time.Second)
	t0 := time.Now()
	eventually(t, cluster.CertTTL, "both certificates renewed", func() bool {
		c, s := certOf(t, client.Node, clientID), certOf(t, server.Node, serverID)
		return c.NotAfter.After(c0.NotAfter) && s.NotAfter.After(s0.NotAfter)
	})
	time.Sleep(2 * time.Second) // traffic on the new certificates too
	t1 := time.Now()
	l.Stop()
	ok, failed := l.Between(t0, t1)
	c1, s1 := certOf(t, client.Node, clientID), certOf(t, server.Node, serverID)
	t.Logf("client certificate renewed (expiry %s -> %s), server certificate renewed (%s -> %s); over %s: %d new connections answered, %d failed",
		c0.NotAfter.Format(time.TimeOnly), c1.NotAfter.Format(time.TimeOnly), s0.NotAfter.Format(time.TimeOnly), s1.NotAfter.Format(time.TimeOnly),
		t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("connections failed across certificate renewals:%s", cluster.DescribeFailed(failed))
	}
}

// certOf reads the certificate a node's ztunnel holds for id from its
// /config_dump.
func certOf(t *testing.T, n *cluster.Node, id string) admin.Certificate {
	t.Helper()
	body, err := n.ZtunnelAdminGet(t.Context(), "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	var d admin.ConfigDump
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Certificates {
		if c.Identity == id {
			return c
		}
	}
	t.Fatalf("%s's ztunnel holds no certificate for %s", n.Name, id)
	return admin.Certificate{}
}
