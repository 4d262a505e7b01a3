// Package agent is zmesh-cni-agent's core: it owns each ambient pod's
// capture and hands the pod to ztunnel over ZDS.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/zmesh/zmesh/api/zds"
)

// ErrNoZtunnel is returned when a pod must be handed to ztunnel and none is
// connected: the pod must not start unprotected, so the caller fails.
var ErrNoZtunnel = errors.New("no ztunnel connected")

// Pod is what ztunnel needs to take a pod: its identity, addresses and the
// three descriptors (netns, listener SOCKMAP, bypass map). The server owns
// the descriptors from AddPod until DelPod.
type Pod struct {
	UID, Name, Namespace, ServiceAccount string
	IPs                                  []netip.Addr
	NetnsFD, SockmapFD, BypassFD         int
}

func (p *Pod) add() *zds.WorkloadRequest {
	ips := make([]string, len(p.IPs))
	for i, ip := range p.IPs {
		ips[i] = ip.String()
	}
	return &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Add{Add: &zds.AddWorkload{
		Uid: p.UID,
		WorkloadInfo: &zds.WorkloadInfo{
			Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount,
		},
		Ips: ips,
	}}}
}

// ZDSServer serves ztunnels on the node. New pods go to the newest
// connection only: a ztunnel that is being replaced keeps what it has and
// takes nothing new (DESIGN.md, Decisions 4 and 8).
type ZDSServer struct {
	ln  *zds.Listener
	log *slog.Logger

	mu     sync.Mutex
	pods   map[string]*Pod
	newest *ztunnelConn
	gen    uint64        // bumped whenever newest changes
	ready  chan struct{} // closed and replaced when newest changes
	conns  map[*ztunnelConn]struct{}
	wg     sync.WaitGroup
}

// ztunnelConn serialises request/ack exchanges on one connection.
type ztunnelConn struct {
	c  *zds.Conn
	mu sync.Mutex
}

func (z *ztunnelConn) request(req *zds.WorkloadRequest, fds ...int) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if err := z.c.Send(req, fds...); err != nil {
		return err
	}
	var resp zds.WorkloadResponse
	got, err := z.c.Recv(&resp)
	closeFDs(got) // ztunnel sends none
	if err != nil {
		return fmt.Errorf("wait for ztunnel's ack: %w", err)
	}
	ack := resp.GetAck()
	if ack == nil {
		return errors.New("ztunnel answered without an ack")
	}
	if ack.GetError() != "" {
		return fmt.Errorf("ztunnel refused: %s", ack.GetError())
	}
	return nil
}

// NewZDSServer listens on path.
func NewZDSServer(path string, log *slog.Logger) (*ZDSServer, error) {
	ln, err := zds.Listen(path)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &ZDSServer{ln: ln, log: log, pods: map[string]*Pod{}, conns: map[*ztunnelConn]struct{}{}, ready: make(chan struct{})}, nil
}

// Run accepts ztunnels until ctx ends; it returns after every connection's
// goroutine has exited.
func (s *ZDSServer) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.ln.Close()
		s.mu.Lock()
		for z := range s.conns {
			z.c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	defer s.wg.Wait()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("zds: accept: %w", err)
		}
		z := &ztunnelConn{c: c}
		s.mu.Lock()
		s.conns[z] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.serve(z) })
	}
}

// serve takes a new ztunnel through hello and snapshot. On success the
// connection stays registered until a request on it fails or Run ends.
func (s *ZDSServer) serve(z *ztunnelConn) {
	var hello zds.ZdsHello
	fds, err := z.c.Recv(&hello)
	closeFDs(fds)
	if err == nil && hello.GetVersion() != zds.Version_V1 {
		err = fmt.Errorf("unsupported version %v", hello.GetVersion())
	}
	if err != nil {
		s.log.Warn("zds: bad hello from ztunnel", "reason", err.Error())
		s.drop(z)
		return
	}
	// The snapshot goes out under s.mu so no pod is added or deleted in the
	// middle of it; then this connection becomes the newest.
	s.mu.Lock()
	for _, p := range s.pods {
		if err := z.request(p.add(), p.NetnsFD, p.SockmapFD, p.BypassFD); err != nil {
			s.mu.Unlock()
			s.log.Warn("zds: snapshot to ztunnel failed", "pod.uid", p.UID, "reason", err.Error())
			s.drop(z)
			return
		}
	}
	err = z.request(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_SnapshotSent{SnapshotSent: &zds.SnapshotSent{}}})
	if err == nil {
		s.setNewestLocked(z)
	}
	n := len(s.pods)
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("zds: snapshot end not acknowledged", "reason", err.Error())
		s.drop(z)
		return
	}
	s.log.Info("zds: ztunnel connected", "pods", n)
}

// drop forgets a connection that failed.
func (s *ZDSServer) drop(z *ztunnelConn) {
	s.mu.Lock()
	delete(s.conns, z)
	if s.newest == z {
		s.setNewestLocked(nil)
	}
	s.mu.Unlock()
	z.c.Close()
}

func (s *ZDSServer) setNewestLocked(z *ztunnelConn) {
	s.newest = z
	s.gen++
	close(s.ready)
	s.ready = make(chan struct{})
}

// WaitZtunnel blocks until a ztunnel has taken the snapshot and can take
// pods, or ctx ends.
func (s *ZDSServer) WaitZtunnel(ctx context.Context) error {
	for {
		s.mu.Lock()
		ok, ch := s.newest != nil, s.ready
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// AddPod hands a pod to the newest ztunnel and returns once it acknowledged
// (its listeners are up and its certificate in hand). The server keeps the
// pod for later ztunnels' snapshots.
func (s *ZDSServer) AddPod(ctx context.Context, p *Pod) error {
	s.mu.Lock()
	z := s.newest
	if z == nil {
		s.mu.Unlock()
		return ErrNoZtunnel
	}
	if old := s.pods[p.UID]; old != nil && old != p {
		closePod(old)
	}
	s.pods[p.UID] = p
	s.mu.Unlock()
	if err := z.request(p.add(), p.NetnsFD, p.SockmapFD, p.BypassFD); err != nil {
		if isGone(err) {
			s.drop(z)
			return fmt.Errorf("%w: %w", ErrNoZtunnel, err)
		}
		return err
	}
	return nil
}

// isGone tells a dead connection from a refusal.
func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// DelPod tells ztunnel to let the pod go and releases its descriptors.
func (s *ZDSServer) DelPod(ctx context.Context, uid string) error {
	s.mu.Lock()
	p := s.pods[uid]
	delete(s.pods, uid)
	z := s.newest
	s.mu.Unlock()
	if p != nil {
		defer closePod(p)
	}
	if z == nil {
		return nil // nobody to tell; the next ztunnel's snapshot omits it
	}
	err := z.request(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Del{Del: &zds.DelWorkload{Uid: uid}}})
	if err != nil && isGone(err) {
		s.drop(z)
		return nil // the next ztunnel's snapshot omits it
	}
	return err
}

func closePod(p *Pod) { closeFDs([]int{p.NetnsFD, p.SockmapFD, p.BypassFD}) }

// Keep registers a pod ztunnel already serves or will serve: one the agent
// captured before it restarted. It goes out with the next snapshot; a
// ztunnel connected already is told at once (Add is idempotent for it).
// Unlike AddPod, no connected ztunnel is not an error: captured pods stay
// captured, failing closed, until one comes.
func (s *ZDSServer) Keep(ctx context.Context, p *Pod) error {
	s.mu.Lock()
	if old := s.pods[p.UID]; old != nil && old != p {
		closePod(old)
	}
	s.pods[p.UID] = p
	z := s.newest
	s.mu.Unlock()
	if z == nil {
		return nil
	}
	if err := z.request(p.add(), p.NetnsFD, p.SockmapFD, p.BypassFD); err != nil {
		if isGone(err) {
			s.drop(z)
			return nil
		}
		return err
	}
	return nil
}
