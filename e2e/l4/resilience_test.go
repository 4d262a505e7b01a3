package l4

import (
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
)

// TestResilience: zmeshd down ⇒ traffic keeps flowing on the last config
// and a change made meanwhile is enforced once it is back; a ztunnel
// replaced under load ⇒ no failed connection; a deleted pod leaves nothing.
func TestResilience(t *testing.T) {
	apply(t, "resilience.yaml", "resil")
	pods := waitPods(t, "resil", 2)
	client, server := pods["client"], pods["server"]
	eventually(t, 15*time.Second, "client and server captured", func() bool {
		return redirected(t, "resil", "client") && redirected(t, "resil", "server")
	})
	dst := server.Addr(echoPort)
	reach(t, client, dst, true, "client -> server")

	// zmeshd stops.
	long, err := client.Open(t.Context(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	l := cluster.StartLoad(client, dst, 20*time.Millisecond, 3*time.Second)
	t0 := time.Now()
	if err := mesh.StopZmeshd(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("zmeshd stopped (SIGTERM, exited) in %s", time.Since(t0).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	kubectl(t, "apply", "-f", "../testdata/resilience-deny.yaml")
	time.Sleep(time.Second)
	if err := long.Ping(2 * time.Second); err != nil {
		t.Errorf("a connection open before zmeshd stopped broke: %v", err)
	}
	t1 := time.Now()
	l.Stop()
	ok, failed := l.Between(t0, t1)
	t.Logf("zmeshd down for %s: %d new connections answered, %d failed; the connection opened before still echoes", t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("traffic while zmeshd was down:%s", cluster.DescribeFailed(failed))
	}
	start := time.Now()
	if err := mesh.StartZmeshd(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("zmeshd back (ready in %s)", time.Since(start).Round(time.Millisecond))
	reach(t, client, dst, false, "the DENY applied while zmeshd was down, once it is back: client -> server")
	kubectl(t, "delete", "-f", "../testdata/resilience-deny.yaml")
	reach(t, client, dst, true, "DENY deleted: client -> server")

	// ztunnel of the server's node replaced under load.
	long2, err := client.Open(t.Context(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer long2.Close()
	l = cluster.StartLoad(client, dst, 10*time.Millisecond, 3*time.Second)
	time.Sleep(500 * time.Millisecond)
	t0 = time.Now()
	oldPid := server.Node.ZtunnelPid()
	if err := mesh.RestartZtunnel(t.Context(), server.Node); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	t1 = time.Now()
	l.Stop()
	ok, failed = l.Between(t0, t1)
	t.Logf("%s ztunnel replaced under load (pid %d -> %d, %s): %d new connections answered, %d failed", server.Node.Name, oldPid, server.Node.ZtunnelPid(), t1.Sub(t0).Round(100*time.Millisecond), ok, len(failed))
	if len(failed) > 0 || ok == 0 {
		t.Errorf("connections failed while ztunnel was replaced:%s", cluster.DescribeFailed(failed))
	}
	if err := long2.Ping(2 * time.Second); err != nil {
		t.Logf("a connection open before the replacement: %v (the old ztunnel drains, then closes it)", err)
	} else {
		t.Log("a connection open before the replacement still echoes within the drain grace")
	}

	// Deleting the server drains it and leaves nothing.
	long3, err := client.Open(t.Context(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer long3.Close()
	died := watchConn(long3)
	start = time.Now()
	kubectl(t, "delete", "pod", "-n", "resil", "server")
	select {
	case at := <-died:
		t.Logf("connection to the deleted server closed %s after kubectl delete", at.Sub(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Error("a connection to the deleted server still open 10s later")
	}
	if server.Node.Kubelet.Pod("resil", "server") != nil {
		t.Error("the node runner still runs the deleted pod")
	}
}
