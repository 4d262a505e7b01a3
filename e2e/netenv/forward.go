package netenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
)

// Forward gives n (and the pods routed through it) a service at `at`:
// at's address on n's loopback, and a listener there whose connections are
// spliced to `to`, dialled from the root namespace. It stands in for a
// ClusterIP Service in front of a process that runs in the root namespace
// (zmeshd), until the harness routes Services. Close the result to stop it;
// the address goes with n.
func Forward(n *NS, at netip.AddrPort, to string) (io.Closer, error) {
	lo, err := n.Netlink().LinkByName("lo")
	if err != nil {
		return nil, err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: at.Addr().AsSlice(), Mask: net.CIDRMask(at.Addr().BitLen(), at.Addr().BitLen())}}
	if err := n.Netlink().AddrAdd(lo, addr); err != nil {
		return nil, fmt.Errorf("forward %s: address on %s's loopback: %w", at, n.Name, err)
	}
	ln, err := n.Listen("tcp", at.String())
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", at, err)
	}
	f := &forwarder{ln: ln, to: to}
	f.wg.Go(f.serve)
	return f, nil
}

// forwarder splices every accepted connection to one address.
type forwarder struct {
	ln net.Listener
	to string

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
		// The listener's socket lives in the namespace; this dial runs on
		// an ordinary thread, in the root namespace.
		out, err := net.Dial("tcp", f.to)
		if err != nil {
			in.Close()
			continue
		}
		if !f.track(in, out) {
			in.Close()
			out.Close()
			return
		}
		f.wg.Go(func() {
			var cw sync.WaitGroup
			cw.Go(func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite() })
			io.Copy(in, out)
			in.(*net.TCPConn).CloseWrite()
			cw.Wait()
			f.untrack(in, out)
		})
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
