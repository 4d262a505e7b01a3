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
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
// takes nothing new (docs/decisions.md, "ztunnel restart handover").
//
// Each request is answered by an Ack that may carry an error. A ztunnel
// whose hello says its acks name their pod (zmesh's) is sent requests for
// different pods at once, one per pod in flight, so a pod slow to add (its
// certificate fetch hangs while the CA is down) delays no other pod's Add,
// nor so its CNI ADD; any other ztunnel (Istio's) gets one request at a
// time per connection, as Istio's ZDS has it. A pod ztunnel refuses (its
// certificate cannot be had, say) costs that pod only. In a (re)connect's snapshot it is
// skipped, the rest go on, and it is retried with backoff for as long as
// the connection is the newest; meanwhile it stays captured with nothing
// behind its capture, so it fails closed.
type ZDSServer struct {
	ln       *zds.Listener
	log      *slog.Logger
	peerUIDs []uint32 // allowed besides root
	retryMin time.Duration
	retryMax time.Duration

	mu     sync.Mutex
	pods   map[string]*Pod
	newest *ztunnelConn
	gen    uint64        // bumped whenever newest changes
	ready  chan struct{} // closed and replaced when newest changes
	conns  map[*ztunnelConn]struct{}
	// failed holds the pods the newest ztunnel refused, to retry.
	failed   map[string]*failedPod
	refusals uint64
	rejected uint64
	kick     chan struct{} // wakes the retry loop
	wg       sync.WaitGroup
}

// failedPod is a pod a ztunnel refused and when to offer it again.
type failedPod struct {
	pod      *Pod
	conn     *ztunnelConn
	attempts int
	next     time.Time
	reason   string
}

// ZDSOption configures a ZDSServer.
type ZDSOption func(*ZDSServer)

// WithPeerUID lets a ztunnel running as uid connect (root always may).
func WithPeerUID(uid uint32) ZDSOption {
	return func(s *ZDSServer) { s.peerUIDs = append(s.peerUIDs, uid) }
}

// WithRetryBackoff sets the backoff between offers of a refused pod
// (default 500ms doubling up to 30s).
func WithRetryBackoff(first, most time.Duration) ZDSOption {
	return func(s *ZDSServer) { s.retryMin, s.retryMax = first, most }
}

// ztunnelConn carries request/ack exchanges on one connection. A peer
// whose hello says its acks name their pod (zmesh's ztunnel) gets one
// request per pod in flight at once, its acks matched by uid, so that a pod
// slow to add holds up no other; any other peer (Istio's ztunnel) gets one
// request at a time, as ZDS has it.
type ztunnelConn struct {
	c     *zds.Conn
	byUID bool
	mu    sync.Mutex // one at a time (!byUID)

	pmu     sync.Mutex
	pending map[string]*pendingReq // by uid; "" is SnapshotSent
	gone    error                  // why the connection ended
	log     *slog.Logger
}

// pendingReq is a request sent and not yet acknowledged.
type pendingReq struct {
	done chan struct{}
	err  error
}

// maxAddsInFlight bounds the Adds a snapshot has on the way at once.
const maxAddsInFlight = 16

// errRefused marks ztunnel's refusal of one request: the connection is
// fine and goes on.
var errRefused = errors.New("ztunnel refused")

func ackErr(ack *zds.Ack) error {
	if ack == nil {
		return errors.New("ztunnel answered without an ack")
	}
	if ack.GetError() != "" {
		return fmt.Errorf("%w: %s", errRefused, ack.GetError())
	}
	return nil
}

func requestUID(req *zds.WorkloadRequest) string {
	switch {
	case req.GetAdd() != nil:
		return req.GetAdd().GetUid()
	case req.GetDel() != nil:
		return req.GetDel().GetUid()
	case req.GetKeep() != nil:
		return req.GetKeep().GetUid()
	}
	return ""
}

func (z *ztunnelConn) request(req *zds.WorkloadRequest, fds ...int) error {
	if z.byUID {
		return z.requestByUID(requestUID(req), req, fds)
	}
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
	return ackErr(resp.GetAck())
}

// requestByUID waits until no other request for the pod is in flight,
// sends req and waits for the ack readAcks hands it.
func (z *ztunnelConn) requestByUID(uid string, req *zds.WorkloadRequest, fds []int) error {
	p := &pendingReq{done: make(chan struct{})}
	for {
		z.pmu.Lock()
		if z.gone != nil {
			err := z.gone
			z.pmu.Unlock()
			return err
		}
		prev := z.pending[uid]
		if prev == nil {
			z.pending[uid] = p
			z.pmu.Unlock()
			break
		}
		z.pmu.Unlock()
		<-prev.done
	}
	if err := z.c.Send(req, fds...); err != nil {
		z.finish(uid, p, err)
		return err
	}
	<-p.done
	return p.err
}

// finish completes a pending request, unless the connection's end did.
func (z *ztunnelConn) finish(uid string, p *pendingReq, err error) {
	z.pmu.Lock()
	defer z.pmu.Unlock()
	if z.pending[uid] != p {
		return
	}
	delete(z.pending, uid)
	p.err = err
	close(p.done)
}

// readAcks hands each ack to the request of the pod it names until the
// connection ends, then fails what is still pending. An ack for no pending
// request (a confused or hostile peer) is logged and dropped.
func (z *ztunnelConn) readAcks() {
	var err error
	for {
		var resp zds.WorkloadResponse
		var got []int
		got, err = z.c.Recv(&resp)
		closeFDs(got) // ztunnel sends none
		if err != nil {
			break
		}
		uid := resp.GetAck().GetUid()
		z.pmu.Lock()
		p := z.pending[uid]
		z.pmu.Unlock()
		if p == nil {
			z.log.Warn("zds: ack for no pending request dropped", "pod.uid", uid)
			continue
		}
		z.finish(uid, p, ackErr(resp.GetAck()))
	}
	z.pmu.Lock()
	z.gone = fmt.Errorf("wait for ztunnel's ack: %w", err)
	for uid, p := range z.pending {
		delete(z.pending, uid)
		p.err = z.gone
		close(p.done)
	}
	z.pmu.Unlock()
}

// NewZDSServer listens on path (mode 0600).
func NewZDSServer(path string, log *slog.Logger, opts ...ZDSOption) (*ZDSServer, error) {
	ln, err := zds.Listen(path)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &ZDSServer{
		ln: ln, log: log, pods: map[string]*Pod{}, conns: map[*ztunnelConn]struct{}{}, ready: make(chan struct{}),
		failed: map[string]*failedPod{}, kick: make(chan struct{}, 1),
		retryMin: 500 * time.Millisecond, retryMax: 30 * time.Second,
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
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
	s.wg.Go(func() { s.retryLoop(ctx) })
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("zds: accept: %w", err)
		}
		if err := s.admit(c); err != nil {
			s.mu.Lock()
			s.rejected++
			s.mu.Unlock()
			s.log.Warn("zds: connection refused", "reason", err.Error())
			c.Close()
			continue
		}
		z := &ztunnelConn{c: c, pending: map[string]*pendingReq{}, log: s.log}
		s.mu.Lock()
		s.conns[z] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.serve(z) })
	}
}

// admit checks who connected: whoever talks to this socket is handed
// pods' network namespaces and capture maps, so only root or a configured
// ztunnel uid may, whatever the socket file's mode.
func (s *ZDSServer) admit(c *zds.Conn) error {
	cred, err := c.PeerCred()
	if err != nil {
		return err
	}
	if cred.Uid == 0 || slices.Contains(s.peerUIDs, cred.Uid) {
		return nil
	}
	return fmt.Errorf("peer pid %d runs as uid %d, not root or an allowed ztunnel uid %v", cred.Pid, cred.Uid, s.peerUIDs)
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
	if hello.GetAcksNamePod() {
		z.byUID = true
		s.wg.Go(func() {
			z.readAcks()
			s.drop(z)
		})
	}
	// Every pod the server holds, then SnapshotSent (ztunnel drops what
	// it had and was not sent), then what changed meanwhile; the switch
	// to this connection happens with nothing left to send.
	r := &replay{sent: map[string]*Pod{}, failed: map[string]string{}}
	err = s.replay(z, r, false)
	if err == nil {
		if err = z.request(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_SnapshotSent{SnapshotSent: &zds.SnapshotSent{}}}); err != nil {
			err = fmt.Errorf("snapshot end not acknowledged: %w", err)
		}
	}
	if err == nil {
		err = s.replay(z, r, true)
	}
	if err != nil {
		s.log.Warn("zds: snapshot to ztunnel failed", "reason", err.Error())
		s.drop(z)
		return
	}
	s.mu.Lock()
	n := len(s.pods)
	s.mu.Unlock()
	s.log.Info("zds: ztunnel connected", "pods", n, "refused", len(r.failed))
}

// replay is what a connection's snapshot has sent so far.
type replay struct {
	sent   map[string]*Pod
	failed map[string]string // refused, with ztunnel's reason
}

// replay sends a new connection the pods the server holds that it has not
// been sent yet, and Dels for those sent that are gone or replaced, until
// there is nothing left; with takeOver the connection then becomes the
// newest, under the same lock. The lock is not held while ztunnel works
// on a pod (that may take seconds), so CNI ADDs go on meanwhile, to the
// previous newest connection, and are caught up on here. A pod ztunnel
// refuses is skipped, and retried once the connection is the newest.
func (s *ZDSServer) replay(z *ztunnelConn, r *replay, takeOver bool) error {
	for {
		s.mu.Lock()
		var add []*Pod
		var del []string
		for uid, p := range s.pods {
			if r.sent[uid] != p {
				add = append(add, p)
			}
		}
		for uid, p := range r.sent {
			if s.pods[uid] != p {
				del = append(del, uid)
			}
		}
		if len(add) == 0 && len(del) == 0 {
			if takeOver {
				s.setNewestLocked(z)
				now := time.Now()
				for uid, reason := range r.failed {
					s.failed[uid] = &failedPod{pod: r.sent[uid], conn: z, attempts: 1, next: now.Add(s.retryMin), reason: reason}
				}
			}
			s.mu.Unlock()
			s.wake()
			return nil
		}
		// Descriptors are duplicated under the lock: DelPod may close the
		// pod's own while its Add is on the way.
		dups := make([][]int, len(add))
		for i, p := range add {
			var err error
			if dups[i], err = dupFDs(p); err != nil {
				for _, d := range dups[:i] {
					closeFDs(d)
				}
				s.mu.Unlock()
				return err
			}
		}
		s.mu.Unlock()
		closeRest := func(from int) {
			for _, d := range dups[from:] {
				closeFDs(d)
			}
		}
		for _, uid := range del {
			delete(r.sent, uid)
			delete(r.failed, uid)
			if err := z.request(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Del{Del: &zds.DelWorkload{Uid: uid}}}); err != nil && !errors.Is(err, errRefused) {
				closeRest(0)
				return fmt.Errorf("pod %s: %w", uid, err)
			}
		}
		// Adds go out together, so that a pod slow to add holds up no
		// other (a peer that takes one at a time queues them).
		errs := make([]error, len(add))
		sem := make(chan struct{}, maxAddsInFlight)
		var wg sync.WaitGroup
		for i, p := range add {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				errs[i] = z.request(p.add(), dups[i]...)
				closeFDs(dups[i])
			})
		}
		wg.Wait()
		var gone error
		for i, p := range add {
			err := errs[i]
			r.sent[p.UID] = p
			delete(r.failed, p.UID)
			if errors.Is(err, errRefused) {
				r.failed[p.UID] = err.Error()
				s.noteRefusal(p, err)
				continue
			}
			if err != nil && gone == nil {
				gone = fmt.Errorf("pod %s: %w", p.UID, err)
			}
		}
		if gone != nil {
			return gone
		}
	}
}

func (s *ZDSServer) noteRefusal(p *Pod, err error) {
	s.mu.Lock()
	s.refusals++
	s.mu.Unlock()
	s.log.Warn("zds: ztunnel refused a pod; it stays captured and is offered again", "pod", p.Namespace+"/"+p.Name, "pod.uid", p.UID, "reason", err.Error())
}

func dupFDs(p *Pod) ([]int, error) {
	var out []int
	for _, fd := range []int{p.NetnsFD, p.SockmapFD, p.BypassFD} {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFDs(out)
			return nil, fmt.Errorf("pod %s: duplicate descriptor: %w", p.UID, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func (s *ZDSServer) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// retryLoop offers refused pods again to the newest ztunnel, each on its
// own backoff, until it takes them or they are deleted.
func (s *ZDSServer) retryLoop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		var next time.Time
		for _, f := range s.failed {
			if next.IsZero() || f.next.Before(next) {
				next = f.next
			}
		}
		s.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
			s.retryDue()
		}
	}
}

// retryDue offers every pod whose backoff has passed once more.
func (s *ZDSServer) retryDue() {
	now := time.Now()
	s.mu.Lock()
	var due []*failedPod
	for uid, f := range s.failed {
		if f.conn != s.newest || s.pods[uid] != f.pod {
			delete(s.failed, uid) // a newer snapshot or the pod's own Add/Del took over
			continue
		}
		if !f.next.After(now) {
			due = append(due, f)
		}
	}
	s.mu.Unlock()
	for _, f := range due {
		s.retry(f)
	}
}

func (s *ZDSServer) retry(f *failedPod) {
	s.mu.Lock()
	if s.failed[f.pod.UID] != f {
		s.mu.Unlock()
		return
	}
	fds, err := dupFDs(f.pod)
	s.mu.Unlock()
	if err == nil {
		err = f.conn.request(f.pod.add(), fds...)
		closeFDs(fds)
	}
	s.mu.Lock()
	if s.failed[f.pod.UID] != f {
		s.mu.Unlock()
		return
	}
	gone := false
	switch {
	case err == nil:
		delete(s.failed, f.pod.UID)
		s.log.Info("zds: ztunnel took a pod it had refused", "pod", f.pod.Namespace+"/"+f.pod.Name, "pod.uid", f.pod.UID, "attempts", f.attempts+1)
	case isGone(err):
		delete(s.failed, f.pod.UID) // the next connection's snapshot carries the pod
		gone = true
	default:
		if errors.Is(err, errRefused) {
			s.refusals++
		}
		f.attempts++
		f.reason = err.Error()
		backoff := s.retryMin << min(f.attempts-1, 16)
		f.next = time.Now().Add(min(backoff, s.retryMax))
		s.log.Debug("zds: pod refused again", "pod.uid", f.pod.UID, "attempts", f.attempts, "reason", f.reason)
	}
	s.mu.Unlock()
	if gone {
		s.drop(f.conn)
	}
}

// FailedPod is a pod the newest ztunnel refused, offered again with
// backoff.
type FailedPod struct {
	UID, Name, Namespace string
	Attempts             int
	Reason               string
}

// Failed lists the pods the newest ztunnel refused and that are retried.
func (s *ZDSServer) Failed() []FailedPod {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FailedPod, 0, len(s.failed))
	for _, f := range s.failed {
		out = append(out, FailedPod{UID: f.pod.UID, Name: f.pod.Name, Namespace: f.pod.Namespace, Attempts: f.attempts, Reason: f.reason})
	}
	slices.SortFunc(out, func(a, b FailedPod) int { return strings.Compare(a.UID, b.UID) })
	return out
}

// Stats counts what ztunnels refused: pods (every refused Add, retries
// included) and connections refused for their peer's credentials.
func (s *ZDSServer) Stats() (podRefusals, rejectedPeers uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusals, s.rejected
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
	delete(s.failed, p.UID)
	s.mu.Unlock()
	if err := z.request(p.add(), p.NetnsFD, p.SockmapFD, p.BypassFD); err != nil {
		if isGone(err) {
			s.drop(z)
			return fmt.Errorf("%w: %w", ErrNoZtunnel, err)
		}
		if errors.Is(err, errRefused) {
			s.mu.Lock()
			s.refusals++
			s.mu.Unlock()
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
	delete(s.failed, uid)
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
	delete(s.failed, p.UID)
	z := s.newest
	s.mu.Unlock()
	if z == nil {
		return nil
	}
	err := z.request(p.add(), p.NetnsFD, p.SockmapFD, p.BypassFD)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errRefused):
		// Captured it stays, failing closed; offered again with backoff.
		s.noteRefusal(p, err)
		s.mu.Lock()
		if s.pods[p.UID] == p && s.newest == z {
			s.failed[p.UID] = &failedPod{pod: p, conn: z, attempts: 1, next: time.Now().Add(s.retryMin), reason: err.Error()}
		}
		s.mu.Unlock()
		s.wake()
		return nil
	case isGone(err):
		s.drop(z)
		return nil
	}
	return err
}
