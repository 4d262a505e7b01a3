// Package inpod opens ztunnel's sockets inside a pod's network namespace:
// the listeners the capture program steers the pod's traffic to, and the
// outbound and transparent sockets that carry it on, all with the proxy's
// mark (docs/capture.md). Sockets keep the namespace they were created
// in, so only their creation happens in the pod; everything else (accept,
// connect, I/O) runs on any goroutine.
package inpod

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("inpod: pod namespace closed")

// Netns runs socket creation inside one pod's network namespace. It keeps
// one OS thread switched into the namespace for its whole life, so opening
// a socket costs a channel round trip, not two setns calls; and for dials
// that thread keeps a small stock of fresh sockets ready, so a dial
// usually takes one without waiting for the thread at all.
type Netns struct {
	h         netns.NsHandle
	work      chan func()
	refill    chan int      // a stock index running low
	quit      chan struct{} // closed by Close
	done      chan struct{} // closed when the thread's loop ended
	closeOnce sync.Once

	stockMu sync.Mutex
	stock   [2][]int // unconnected non-blocking TCP sockets: IPv4, IPv6
	closed  bool
}

// stockSize is how many fresh sockets of a family a namespace keeps ready
// once it dialled with that family; refilled at half.
const stockSize = 8

// Open takes a pod's namespace by descriptor (as ZDS delivers it); Netns
// owns the descriptor from then on.
func Open(fd int) (*Netns, error) {
	n := &Netns{h: netns.NsHandle(fd), work: make(chan func()), refill: make(chan int, 2), quit: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	go n.loop(ready)
	if err := <-ready; err != nil {
		unix.Close(fd)
		return nil, err
	}
	return n, nil
}

func (n *Netns) loop(ready chan<- error) {
	defer close(n.done)
	runtime.LockOSThread()
	// The thread is never switched back: when the loop ends, the goroutine
	// exits still locked and the runtime retires the thread with it.
	if err := netns.Set(n.h); err != nil {
		ready <- fmt.Errorf("inpod: enter pod netns: %w", err)
		return
	}
	ready <- nil
	for {
		select {
		case f := <-n.work:
			f()
		case i := <-n.refill:
			n.fillStock(i)
		case <-n.quit:
			return
		}
	}
}

// Do runs f inside the namespace.
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	select {
	case n.work <- func() { errc <- f() }:
		return <-errc
	case <-n.done:
		return ErrClosed
	}
}

// Close stops the namespace's thread and releases the descriptor. Sockets
// already opened stay open.
func (n *Netns) Close() error {
	var err error
	n.closeOnce.Do(func() {
		close(n.quit)
		<-n.done
		err = unix.Close(int(n.h))
		n.stockMu.Lock()
		n.closed = true
		for i, fds := range n.stock {
			for _, fd := range fds {
				unix.Close(fd)
			}
			n.stock[i] = nil
		}
		n.stockMu.Unlock()
	})
	return err
}

var stockFamilies = [2]int{unix.AF_INET, unix.AF_INET6}

// newSocket makes a TCP socket as a dial wants it. On the namespace's
// thread.
func newSocket(family int) (int, error) {
	return unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
}

// takeSocket returns an unconnected TCP socket of the family (stock index
// i) made in the pod: from the stock if it has one (asking the thread to
// refill it once it runs low), else made now.
func (n *Netns) takeSocket(i int) (int, error) {
	n.stockMu.Lock()
	fd := -1
	if k := len(n.stock[i]); k > 0 {
		fd = n.stock[i][k-1]
		n.stock[i] = n.stock[i][:k-1]
	}
	low := !n.closed && len(n.stock[i]) <= stockSize/2
	n.stockMu.Unlock()
	if low {
		select {
		case n.refill <- i:
		default: // a refill is already asked for
		}
	}
	if fd >= 0 {
		return fd, nil
	}
	err := n.Do(func() error {
		var err error
		fd, err = newSocket(stockFamilies[i])
		return err
	})
	return fd, err
}

// fillStock tops stock i up. On the namespace's thread.
func (n *Netns) fillStock(i int) {
	n.stockMu.Lock()
	need := stockSize - len(n.stock[i])
	n.stockMu.Unlock()
	fresh := make([]int, 0, max(need, 0))
	for range need {
		fd, err := newSocket(stockFamilies[i])
		if err != nil {
			break // dials make their own, and report the error
		}
		fresh = append(fresh, fd)
	}
	n.stockMu.Lock()
	if n.closed {
		for _, fd := range fresh {
			unix.Close(fd)
		}
	} else {
		n.stock[i] = append(n.stock[i], fresh...)
	}
	n.stockMu.Unlock()
}
