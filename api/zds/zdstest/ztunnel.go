// Package zdstest is a stand-in ztunnel for tests of the ZDS server and the
// CNI plugin before (and besides) the real ztunnel: it says hello, records
// every request with the descriptors that came with it, and acknowledges
// each one, or refuses with the error Refuse returns.
package zdstest

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds"
)

// Request is one request received, with its descriptors' identities.
type Request struct {
	Msg *zds.WorkloadRequest
	// Inodes of the received descriptors (st_ino), to compare with what
	// the sender passed; the descriptors themselves are closed.
	Inodes []uint64
}

// Ztunnel is a fake ztunnel connected to an agent.
type Ztunnel struct {
	c *zds.Conn
	// Refuse, if set, decides the ack's error for each request.
	Refuse func(*zds.WorkloadRequest) string

	mu       sync.Mutex
	requests []Request
	changed  *sync.Cond
	done     chan struct{}
	err      error
}

// Connect dials the agent's socket and says hello.
func Connect(path string, refuse func(*zds.WorkloadRequest) string) (*Ztunnel, error) {
	c, err := zds.Dial(path)
	if err != nil {
		return nil, err
	}
	if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1}); err != nil {
		c.Close()
		return nil, err
	}
	z := &Ztunnel{c: c, Refuse: refuse, done: make(chan struct{})}
	z.changed = sync.NewCond(&z.mu)
	go z.loop()
	return z, nil
}

func (z *Ztunnel) loop() {
	defer close(z.done)
	for {
		var req zds.WorkloadRequest
		fds, err := z.c.Recv(&req)
		if err != nil {
			z.mu.Lock()
			z.err = err
			z.changed.Broadcast()
			z.mu.Unlock()
			return
		}
		r := Request{Msg: &req}
		for _, fd := range fds {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil {
				r.Inodes = append(r.Inodes, st.Ino)
			}
			unix.Close(fd)
		}
		errText := ""
		if z.Refuse != nil {
			errText = z.Refuse(&req)
		}
		z.mu.Lock()
		z.requests = append(z.requests, r)
		z.changed.Broadcast()
		z.mu.Unlock()
		resp := &zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: &zds.Ack{Error: errText}}}
		if err := z.c.Send(resp); err != nil {
			return
		}
	}
}

// Requests returns what was received so far.
func (z *Ztunnel) Requests() []Request {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]Request(nil), z.requests...)
}

// WaitFor blocks until n requests arrived or the connection ended.
func (z *Ztunnel) WaitFor(n int) ([]Request, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	for len(z.requests) < n && z.err == nil {
		z.changed.Wait()
	}
	if len(z.requests) < n {
		return z.requests, fmt.Errorf("connection ended after %d requests: %w", len(z.requests), z.err)
	}
	return append([]Request(nil), z.requests...), nil
}

// Close disconnects, as a ztunnel that exits.
func (z *Ztunnel) Close() error {
	err := z.c.Close()
	<-z.done
	return err
}
