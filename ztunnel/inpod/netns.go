// Package inpod opens ztunnel's sockets inside a pod's network namespace:
// the listeners the capture program steers the pod's traffic to, and the
// outbound and transparent sockets that carry it on, all with the proxy's
// mark (DESIGN.md "Capture"). Sockets keep the namespace they were created
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
// a socket costs a channel round trip, not two setns calls.
type Netns struct {
	h         netns.NsHandle
	work      chan func()
	quit      chan struct{} // closed by Close
	done      chan struct{} // closed when the thread's loop ended
	closeOnce sync.Once
}

// Open takes a pod's namespace by descriptor (as ZDS delivers it); Netns
// owns the descriptor from then on.
func Open(fd int) (*Netns, error) {
	n := &Netns{h: netns.NsHandle(fd), work: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
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
	})
	return err
}
