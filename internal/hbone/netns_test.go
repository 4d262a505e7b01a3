package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/identity"
)

// TestAcrossNamespaces runs the tunnel between two network namespaces on a
// bridge, as between two nodes: the client's socket lives in one, the
// server, its app and the server's dial to the app in the other.
func TestAcrossNamespaces(t *testing.T) {
	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.77.0.0/24"))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() {
		if err := lan.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if left := netenv.Leftovers(); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	nsA, _, err := lan.Host("a")
	if err != nil {
		t.Fatal(err)
	}
	nsB, addrB, err := lan.Host("b")
	if err != nil {
		t.Fatal(err)
	}

	// The app in B answers with what it saw.
	app, err := nsB.Listen("tcp", netip.AddrPortFrom(addrB, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(append([]byte("b got "), b...))
			}()
		}
	}()

	p := testPKI(t)
	peers := make(chan *Request, 1)
	srv, err := NewServer(func(ctx context.Context, r *Request, s *Stream) {
		peers <- r
		up, err := nsB.Dial(ctx, "tcp", r.Target.String())
		if err != nil {
			s.RespondError(503, err.Error())
			return
		}
		defer up.Close()
		s.Respond(200)
		Join(s, up)
	}, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hln, err := nsB.Listen("tcp", netip.AddrPortFrom(addrB, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hln.Close()
	serveOn(srv, hln, identity.ServerTLS(p.src, bob, nil))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	pool, err := NewPool(PoolConfig{
		Dial: func(ctx context.Context, k Key) (net.Conn, error) { return nsA.Dial(ctx, "tcp", k.Dst.String()) },
		TLS: func(k Key) (*tls.Config, error) {
			return identity.ClientTLS(p.src, k.SrcID, []spiffeid.ID{k.DstID}), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// Everything crossing the underlay is captured: the payload must not
	// be readable there.
	capture, err := lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Stop()
	key := Key{SrcWorkload: "a", SrcID: alice, DstID: bob, Dst: netip.AddrPortFrom(addrB, 15008)}
	st, err := pool.Connect(context.Background(), key, &ConnectRequest{Target: netip.AddrPortFrom(addrB, 8080)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := exchange(t, st, "hello"); got != "b got hello" {
		t.Fatalf("answer %q", got)
	}
	if r := <-peers; r.Peer != alice {
		t.Errorf("server saw %s, want %s", r.Peer, alice)
	}
	capture.Stop()
	if frames, _ := capture.Stats(); frames == 0 {
		t.Fatal("capture saw nothing on the underlay")
	}
	if capture.Contains([]byte("hello")) || capture.Contains([]byte("b got")) {
		t.Fatal("tunnelled payload visible in plaintext on the underlay")
	}
	// The control: the same capture does see plaintext sent without the
	// tunnel, so its silence above means something.
	control, err := lan.Underlay.Capture("")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := nsA.Dial(context.Background(), "tcp", netip.AddrPortFrom(addrB, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	pc.Write([]byte("plain-marker"))
	pc.(*net.TCPConn).CloseWrite()
	io.ReadAll(pc)
	pc.Close()
	control.Stop()
	if !control.Contains([]byte("plain-marker")) {
		t.Fatal("capture missed a plaintext request: it cannot vouch for the tunnel")
	}

	// From A, expecting the wrong identity at B's address fails closed.
	wrong := key
	wrong.DstID = carol
	if _, err := pool.Connect(context.Background(), wrong, &ConnectRequest{Target: netip.AddrPortFrom(addrB, 8080)}); err == nil {
		t.Fatal("tunnel to B accepted while expecting carol")
	}
}
