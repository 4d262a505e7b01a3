package netenv

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Capture records every frame seen on one interface of a namespace, like
// tcpdump on it, with an AF_PACKET socket. Tests use it to prove what is,
// and is not, visible on the wire.
type Capture struct {
	fd       int
	stop     atomic.Bool
	stopOnce sync.Once
	mu       sync.Mutex
	frames   [][]byte
	bytes    int
	done     chan struct{}
}

// Capture starts recording frames on ifName inside the namespace, or on
// every interface of it when ifName is empty (a frame crossing a bridge is
// then seen once per port). A bridge's own interface sees only frames for
// the bridge itself, not those it switches between ports.
func (n *NS) Capture(ifName string) (*Capture, error) {
	var c *Capture
	err := n.Do(func() error {
		index := 0
		if ifName != "" {
			ifi, err := net.InterfaceByName(ifName)
			if err != nil {
				return err
			}
			index = ifi.Index
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %q: %w", ifName, err)
		}
		// A receive timeout lets the loop notice Stop: closing a socket
		// does not wake a blocked recvfrom.
		tv := unix.Timeval{Usec: 50_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c = &Capture{fd: fd, done: make(chan struct{})}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %q in %s: %w", ifName, n.Name, err)
	}
	go c.loop()
	return c, nil
}

func (c *Capture) loop() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		stopping := c.stop.Load()
		flags := 0
		if stopping {
			// Drain what the kernel already queued, then end.
			flags = unix.MSG_DONTWAIT
		}
		n, _, err := unix.Recvfrom(c.fd, buf, flags)
		if err != nil {
			if err == unix.EINTR || (err == unix.EAGAIN && !stopping) {
				continue
			}
			return
		}
		c.mu.Lock()
		c.frames = append(c.frames, bytes.Clone(buf[:n]))
		c.bytes += n
		c.mu.Unlock()
	}
}

// Stop ends the capture. It may be called more than once.
func (c *Capture) Stop() {
	c.stopOnce.Do(func() {
		c.stop.Store(true)
		<-c.done
		unix.Close(c.fd)
	})
}

// Stats returns frames and bytes seen so far.
func (c *Capture) Stats() (frames, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames), c.bytes
}

// Contains reports whether any captured frame holds needle.
func (c *Capture) Contains(needle []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if bytes.Contains(f, needle) {
			return true
		}
	}
	return false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
