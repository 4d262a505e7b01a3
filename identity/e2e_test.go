package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestEndToEnd: ztunnel's CertClient fetches pod certificates from a
// CertServer over gRPC through a Manager, and two pods complete a TLS 1.3
// handshake with them.
func TestEndToEnd(t *testing.T) {
	verifyNoLeaks(t)
	ca, err := LoadOrCreateCA(t.TempDir(), CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn := startCertServer(t, ca, true)
	client, err := NewCertClient(conn, func(context.Context) (string, error) { return ztunnelToken, nil }, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(client, ca.Bundle(), ManagerOptions{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	runManager(t, m)

	// ztunnel may not obtain a pod that is not on its node.
	if _, err := m.SVID(context.Background(), podCID); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("pod on another node: err = %v", err)
	}

	t.Run("mutual", func(t *testing.T) {
		var serverSaw spiffeid.ID
		srv := ServerTLS(m, podBID, func(peer spiffeid.ID) error { serverSaw = peer; return nil })
		cs, ss, err := handshake(ClientTLS(m, podAID, []spiffeid.ID{podBID}), srv)
		if err != nil {
			t.Fatal(err)
		}
		if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != ALPNH2 {
			t.Errorf("version %x alpn %q, want TLS 1.3 h2", cs.Version, cs.NegotiatedProtocol)
		}
		if id, err := PeerID(cs); err != nil || id != podBID {
			t.Errorf("client sees %s, %v; want %s", id, err, podBID)
		}
		if id, err := PeerID(ss); err != nil || id != podAID || serverSaw != podAID {
			t.Errorf("server sees %s (%s), %v; want %s", id, serverSaw, err, podAID)
		}
		leaf := cs.PeerCertificates[0]
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour+time.Minute {
			t.Errorf("certificate lifetime %s, want the 1h asked + 1m skew", got)
		}
	})
	t.Run("wrong expected server", func(t *testing.T) {
		_, _, err := handshake(ClientTLS(m, podAID, []spiffeid.ID{podCID}), ServerTLS(m, podBID, nil))
		var mismatch *PeerMismatchError
		if !errors.As(err, &mismatch) || mismatch.Got != podBID {
			t.Fatalf("err = %v, want a PeerMismatchError for %s", err, podBID)
		}
	})
	t.Run("server refuses client", func(t *testing.T) {
		deny := func(spiffeid.ID) error { return errors.New("denied") }
		if _, _, err := handshake(ClientTLS(m, podAID, []spiffeid.ID{podBID}), ServerTLS(m, podBID, deny)); err == nil {
			t.Fatal("handshake succeeded")
		}
	})
	t.Run("tls 1.2 client", func(t *testing.T) {
		cfg := ClientTLS(m, podAID, []spiffeid.ID{podBID})
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		_, _, err := handshake(cfg, ServerTLS(m, podBID, nil))
		if err == nil {
			t.Fatal("TLS 1.2 handshake succeeded")
		}
	})
	t.Run("full records, no session tickets", func(t *testing.T) {
		records, tickets, err := firstRecords(ClientTLS(m, podAID, []spiffeid.ID{podBID}), ServerTLS(m, podBID, nil), 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		// 64 KiB is four full records: 16 KiB of data, the inner content
		// type and the 16-byte AEAD tag. Go's default ramps record sizes
		// up from about 1 KiB on each new connection.
		if want := []int{16401, 16401, 16401, 16401}; !slices.Equal(records, want) {
			t.Errorf("records of a 64 KiB write: %v, want %v", records, want)
		}
		if tickets != 0 {
			t.Errorf("client was offered %d session tickets, want none", tickets)
		}
	})
	if n := len(m.Certificates()); n != 3 {
		t.Errorf("manager tracks %d identities, want a, b and the refused c", n)
	}
}

// handshake runs a TLS handshake over loopback TCP and returns both sides'
// state, or the first error (the client's if both failed).
func handshake(client, server *tls.Config) (tls.ConnectionState, tls.ConnectionState, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return tls.ConnectionState{}, tls.ConnectionState{}, err
	}
	defer lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type result struct {
		cs  tls.ConnectionState
		err error
	}
	srvDone := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			srvDone <- result{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		err = tc.HandshakeContext(ctx)
		if err == nil {
			// TLS 1.3 clients finish before the server checks their
			// certificate; a read makes the server's verdict reach them.
			_, _ = tc.Write([]byte{1})
		}
		srvDone <- result{tc.ConnectionState(), err}
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		return tls.ConnectionState{}, tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := tls.Client(c, client)
	cerr := tc.HandshakeContext(ctx)
	if cerr == nil {
		_, cerr = tc.Read(make([]byte, 1))
	}
	if cerr != nil {
		c.Close()
	}
	sr := <-srvDone
	if cerr != nil {
		return tls.ConnectionState{}, tls.ConnectionState{}, cerr
	}
	return tc.ConnectionState(), sr.cs, sr.err
}

// firstRecords handshakes over loopback TCP, has the server write size
// bytes at once, and returns the lengths of the TLS records that write
// made, and how many session tickets reached the client.
func firstRecords(client, server *tls.Config, size int) (records []int, tickets int, err error) {
	cache := &ticketCounter{}
	client.ClientSessionCache = cache
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, 0, err
	}
	defer lis.Close()
	rec := &writeRecorder{}
	srvErr := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		rec.Conn = c
		tc := tls.Server(rec, server)
		if err := tc.Handshake(); err != nil {
			srvErr <- err
			return
		}
		rec.start()
		_, err = tc.Write(make([]byte, size))
		srvErr <- err
	}()
	c, err := net.DialTimeout("tcp", lis.Addr().String(), 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tls.Client(c, client), make([]byte, size)); err != nil {
		return nil, 0, err
	}
	if err := <-srvErr; err != nil {
		return nil, 0, err
	}
	b := rec.bytes()
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		records = append(records, n)
		b = b[min(len(b), 5+n):]
	}
	return records, cache.puts(), nil
}

// writeRecorder keeps what is written to its connection once started.
type writeRecorder struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
}

func (w *writeRecorder) start() { w.mu.Lock(); w.on = true; w.mu.Unlock() }

func (w *writeRecorder) bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.buf)
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.on {
		w.buf = append(w.buf, p...)
	}
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// ticketCounter is a client session cache that counts what it is given.
type ticketCounter struct {
	mu sync.Mutex
	n  int
}

func (c *ticketCounter) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

func (c *ticketCounter) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
}

func (c *ticketCounter) puts() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }
