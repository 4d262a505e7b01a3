package l4

import (
	"fmt"
	"testing"
	"time"
)

// tlsRecord is the header of a TLS 1.2/1.3 application-data record.
var tlsRecord = []byte{0x17, 0x03, 0x03}

// TestMutualTLS: traffic between ambient pods crosses the underlay as TLS
// records only; PeerAuthentication STRICT refuses a client outside the
// mesh, PERMISSIVE and DISABLE accept it, and mesh pods keep mTLS either
// way.
func TestMutualTLS(t *testing.T) {
	apply(t, "mtls.yaml", "mtls", "mtls-legacy")
	mp := waitPods(t, "mtls", 2)
	lp := waitPods(t, "mtls-legacy", 1)
	client, server, outsider := mp["client"], mp["server"], lp["outsider"]
	eventually(t, 15*time.Second, "client and server captured", func() bool {
		return redirected(t, "mtls", "client") && redirected(t, "mtls", "server")
	})
	dst := server.Addr(echoPort)
	reach(t, client, dst, true, "client -> server (both ambient, across nodes)")

	// What crosses the underlay between the two nodes.
	secret := fmt.Sprintf("top-secret-%d", time.Now().UnixNano())
	wire, err := mesh.LAN.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := client.Open(t.Context(), dst)
	if err != nil {
		wire.Stop()
		t.Fatal(err)
	}
	for i := range 20 {
		if err := conn.Say(fmt.Sprintf("%s-%d", secret, i), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	wire.Stop()
	frames, n := wire.Stats()
	if frames == 0 {
		t.Fatal("the underlay capture saw nothing: it proves nothing")
	}
	if wire.Contains([]byte(secret)) || wire.Contains([]byte("pod=mtls/server")) {
		t.Error("plaintext payload between ambient pods seen on the underlay")
	}
	if !wire.Contains(tlsRecord) {
		t.Error("no TLS application-data record seen on the underlay")
	}
	t.Logf("underlay capture, 20 echoed lines client -> server: %d frames, %d bytes, payload %q not in any frame; TLS application-data records present", frames, n, secret)

	// The same from a pod outside the mesh is plaintext: the capture can
	// tell the difference.
	wire, err = mesh.LAN.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := outsider.Echo(t.Context(), dst); err != nil {
		wire.Stop()
		t.Fatalf("outsider -> server with no PeerAuthentication (PERMISSIVE by default): %v", err)
	}
	wire.Stop()
	if !wire.Contains([]byte("pod=mtls/server")) {
		t.Error("control: the plaintext answer to the outsider was not seen on the underlay")
	}
	t.Log("control: outsider (not in the mesh) -> server is accepted by default and its plaintext answer IS visible on the underlay")

	kubectl(t, "apply", "-f", "../testdata/mtls-strict.yaml")
	reach(t, outsider, dst, false, "STRICT: outsider (plaintext) -> server")
	reach(t, client, dst, true, "STRICT: client (mTLS) -> server")

	// Workload > namespace: a selector PERMISSIVE lifts the namespace's
	// STRICT for the server alone.
	kubectl(t, "apply", "-f", "../testdata/mtls-workload-permissive.yaml")
	reach(t, outsider, dst, true, "namespace STRICT, server PERMISSIVE: outsider (plaintext) -> server")
	reach(t, outsider, client.Addr(echoPort), false, "namespace STRICT, server PERMISSIVE: outsider (plaintext) -> client, still STRICT")
	kubectl(t, "delete", "-f", "../testdata/mtls-workload-permissive.yaml")
	reach(t, outsider, dst, false, "workload policy deleted, namespace STRICT again: outsider (plaintext) -> server")

	kubectl(t, "apply", "-f", "../testdata/mtls-permissive.yaml")
	reach(t, outsider, dst, true, "PERMISSIVE: outsider (plaintext) -> server")
	reach(t, client, dst, true, "PERMISSIVE: client (mTLS) -> server")

	kubectl(t, "apply", "-f", "../testdata/mtls-disable.yaml")
	reach(t, outsider, dst, true, "DISABLE: outsider (plaintext) -> server")
	wire, err = mesh.LAN.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = client.Echo(t.Context(), dst)
	wire.Stop()
	if err != nil {
		t.Fatalf("DISABLE: client -> server: %v", err)
	}
	if wire.Contains([]byte("pod=mtls/server")) {
		t.Error("DISABLE: traffic between mesh pods went in plaintext (ambient keeps mTLS between mesh pods)")
	}
	t.Log("DISABLE: client (mesh) -> server answered, still only TLS records on the underlay")
}
