package netenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// Forward gives n (and the pods routed through it) a service at `at`:
// at's address on n's loopback, and a listener there whose connections are
// spliced to `to`, dialled from the root namespace. It stands in for a
// ClusterIP Service in front of a process that runs in the root namespace
// (zmeshd), until the harness routes Services. Close the result to stop it;
// the address goes with n.
func Forward(n *NS, at netip.AddrPort, to string) (io.Closer, error) {
	return ForwardTo(n, at, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", to)
	})
}

// ForwardTo is Forward with a dial of the caller's for each accepted
// connection (which endpoint, from which namespace).
func ForwardTo(n *NS, at netip.AddrPort, dial func(ctx context.Context) (net.Conn, error)) (io.Closer, error) {
	lo, err := n.Netlink().LinkByName("lo")
	if err != nil {
		return nil, err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: at.Addr().AsSlice(), Mask: net.CIDRMask(at.Addr().BitLen(), at.Addr().BitLen())}}
	if err := n.Netlink().AddrAdd(lo, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("forward %s: address on %s's loopback: %w", at, n.Name, err)
	}
	ln, err := n.Listen("tcp", at.String())
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", at, err)
	}
	f := &forwarder{ln: ln, dial: dial}
	f.wg.Go(f.serve)
	return f, nil
}

// forwarder splices every accepted connection to what dial returns.
type forwarder struct {
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (f *forwarder) serve() {
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(in) {
			in.Close()
			return
		}
		// The dial may take a while (an endpoint on another node): the
		// next connection is not held up behind it.
		f.wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := f.dial(ctx)
			cancel()
			if err != nil || !f.track(out) {
				if out != nil {
					out.Close()
				}
				f.untrack(in)
				return
			}
			var cw sync.WaitGroup
			cw.Go(func() { io.Copy(out, in); closeWrite(out) })
			io.Copy(in, out)
			closeWrite(in)
			cw.Wait()
			f.untrack(in, out)
		})
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
}

func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		f.conns = map[net.Conn]struct{}{}
	}
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(f.conns, c)
	}
}

// Close stops accepting, cuts every spliced connection and waits for the
// goroutines.
func (f *forwarder) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errors.New("forwarder closed twice")
	}
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	return err
}
