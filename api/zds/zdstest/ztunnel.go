// Package zdstest is a stand-in ztunnel for tests of the ZDS server and the
// CNI plugin before (and besides) the real ztunnel: it says hello, records
// every request with the descriptors that came with it, and acknowledges
// each one, or refuses with the error Refuse returns. Connect's stand-in
// behaves as zmesh's ztunnel: its acks name their pod and it answers
// requests in any order (Refuse runs for each request in its own
// goroutine, so one that blocks holds up only its own ack).
// ConnectSerial's behaves as Istio's: acks without uid, in order.
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
	serial bool

	mu       sync.Mutex
	requests []Request
	changed  *sync.Cond
	done     chan struct{}
	err      error
	wg       sync.WaitGroup // answers on the way
}

// Connect dials the agent's socket and says hello, announcing acks that
// name their pod.
func Connect(path string, refuse func(*zds.WorkloadRequest) string) (*Ztunnel, error) {
	return connect(path, refuse, false)
}

// ConnectSerial is Connect for a peer as Istio's ztunnel: no
// announcement, acks without uid, one request at a time.
func ConnectSerial(path string, refuse func(*zds.WorkloadRequest) string) (*Ztunnel, error) {
	return connect(path, refuse, true)
}

func connect(path string, refuse func(*zds.WorkloadRequest) string, serial bool) (*Ztunnel, error) {
	c, err := zds.Dial(path)
	if err != nil {
		return nil, err
	}
	if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1, AcksNamePod: !serial}); err != nil {
		c.Close()
		return nil, err
	}
	z := &Ztunnel{c: c, Refuse: refuse, serial: serial, done: make(chan struct{})}
	z.changed = sync.NewCond(&z.mu)
	go z.loop()
	return z, nil
}

func (z *Ztunnel) loop() {
	defer close(z.done)
	defer z.wg.Wait()
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
		if z.serial {
			if z.answer(r, "") != nil {
				return
			}
			continue
		}
		uid := req.GetAdd().GetUid() + req.GetDel().GetUid() + req.GetKeep().GetUid()
		z.wg.Go(func() { z.answer(r, uid) })
	}
}

// answer records r and acks it.
func (z *Ztunnel) answer(r Request, uid string) error {
	errText := ""
	if z.Refuse != nil {
		errText = z.Refuse(r.Msg)
	}
	z.mu.Lock()
	z.requests = append(z.requests, r)
	z.changed.Broadcast()
	z.mu.Unlock()
	return z.c.Send(&zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: &zds.Ack{Error: errText, Uid: uid}}})
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
