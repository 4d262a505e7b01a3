package cluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/vishvananda/netlink"
)

// WaypointImage is the image zmeshd puts in the waypoint Deployments it
// creates; the node runners run it as the waypoint binary built here.
const WaypointImage = "zmesh/waypoint:e2e"

// forwardControlPlane gives the node's pods zmeshd at
// ControlPlaneAddr:port: the address on the host namespace's loopback (pods
// route to it through their gateway) and a listener there whose
// connections are spliced to zmeshd's port on the root namespace's
// loopback. It stands in for zmeshd's Service until the harness routes
// Services.
func (c *Cluster) forwardControlPlane(n *Node, port string) error {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("zmeshd port %q: %w", port, err)
	}
	lo, err := n.Host.Netlink().LinkByName("lo")
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ControlPlaneAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := n.Host.Netlink().AddrAdd(lo, addr); err != nil {
		return fmt.Errorf("%s: control-plane address: %w", n.Name, err)
	}
	ln, err := n.Host.Listen("tcp", netip.AddrPortFrom(ControlPlaneAddr, uint16(p)).String())
	if err != nil {
		return fmt.Errorf("%s: control-plane forwarder: %w", n.Name, err)
	}
	f := &forwarder{ln: ln, to: "127.0.0.1:" + port}
	n.forward = f
	f.wg.Go(f.serve)
	return nil
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
		// The listener's socket lives in the node's namespace; this dial
		// runs on an ordinary thread, in the root namespace.
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
