package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds"
	"github.com/zmesh/zmesh/bpf"
)

// Pod is what the node agent hands ztunnel over ZDS.
type Pod struct {
	UID, Name, Namespace, ServiceAccount string
	IPs                                  []netip.Addr
	// Netns runs socket creation in the pod; Maps are its capture maps.
	// The handler owns both from AddPod on.
	Netns *Netns
	Maps  *bpf.PodMaps
}

// Handler is ztunnel's side of ZDS.
type Handler interface {
	// AddPod takes a pod: it returns only once the pod's listeners are up
	// and its certificate is in hand, since the agent lets the pod start
	// when this returns. An error refuses the pod.
	AddPod(ctx context.Context, p *Pod) error
	// DelPod lets a pod go (close its listeners, drain its connections).
	DelPod(ctx context.Context, uid string) error
	// Reconcile runs after a (re)connect's snapshot: pods not in keep are
	// gone from the node.
	Reconcile(ctx context.Context, keep map[string]bool) error
}

// RunZDS connects to the agent's socket and serves it until ctx ends,
// reconnecting with backoff when the agent restarts.
func RunZDS(ctx context.Context, path string, h Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	backoff := 100 * time.Millisecond
	for {
		err := serveZDS(ctx, path, h)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("zds: connection to the node agent ended", "reason", err.Error(), "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// maxConcurrentAdds bounds the requests handled at once on one connection:
// each holds a pod's descriptors and, for an Add, a certificate fetch.
const maxConcurrentAdds = 16

// serveZDS handles requests concurrently, each pod's in the order they came
// (a Del or Keep waits for that pod's Add), and acks each when done, naming
// its pod, so that a pod whose Add is slow (its certificate cannot be had)
// holds up no other. SnapshotSent waits for every request before it: the
// reconcile must see every pod the snapshot carried. The hello tells the
// agent that acks name their pod; an agent that keeps one request in
// flight (Istio's) gets the same answers in the same order.
func serveZDS(ctx context.Context, path string, h Handler) error {
	c, err := zds.Dial(path)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1, AcksNamePod: true}); err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		busy = map[string]chan struct{}{} // uid -> done of its latest request
		sem  = make(chan struct{}, maxConcurrentAdds)
		wg   sync.WaitGroup
	)
	// A handler still running when the connection ends finishes first:
	// it owns the pod's descriptors.
	defer wg.Wait()
	mark := func(uid string, sent bool) {
		mu.Lock()
		defer mu.Unlock()
		if sent {
			seen[uid] = true
		} else {
			delete(seen, uid)
		}
	}
	snapshot := func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(seen)
	}
	ack := func(uid string, herr error) error {
		a := &zds.Ack{Uid: uid}
		if herr != nil {
			a.Error = herr.Error()
		}
		return c.Send(&zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: a}})
	}
	for {
		var req zds.WorkloadRequest
		fds, err := c.Recv(&req)
		if err != nil {
			return err
		}
		uid, ok := requestUID(&req)
		if !ok {
			// SnapshotSent or unknown: after everything before it.
			wg.Wait()
			if err := ack("", handle(ctx, h, &req, fds, mark, snapshot)); err != nil {
				return err
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			closeAll(fds)
			return ctx.Err()
		}
		done := make(chan struct{})
		mu.Lock()
		prev := busy[uid]
		busy[uid] = done
		mu.Unlock()
		wg.Go(func() {
			defer func() { <-sem }()
			if prev != nil {
				<-prev
			}
			herr := handle(ctx, h, &req, fds, mark, snapshot)
			if err := ack(uid, herr); err != nil {
				c.Close() // the read loop sees it and returns
			}
			mu.Lock()
			if busy[uid] == done {
				delete(busy, uid)
			}
			mu.Unlock()
			close(done)
		})
	}
}

// requestUID names the pod a request is for.
func requestUID(req *zds.WorkloadRequest) (string, bool) {
	switch {
	case req.GetAdd() != nil:
		return req.GetAdd().GetUid(), true
	case req.GetDel() != nil:
		return req.GetDel().GetUid(), true
	case req.GetKeep() != nil:
		return req.GetKeep().GetUid(), true
	}
	return "", false
}

// handle runs one request; mark records which pods the agent sent on this
// connection, snapshot returns them.
func handle(ctx context.Context, h Handler, req *zds.WorkloadRequest, fds []int, mark func(uid string, sent bool), snapshot func() map[string]bool) error {
	switch {
	case req.GetAdd() != nil:
		p, err := podFrom(req.GetAdd(), fds)
		if err != nil {
			return err
		}
		if err := h.AddPod(ctx, p); err != nil {
			p.Netns.Close()
			p.Maps.Close()
			return err
		}
		mark(p.UID, true)
		return nil
	case req.GetDel() != nil:
		closeAll(fds)
		mark(req.GetDel().GetUid(), false)
		return h.DelPod(ctx, req.GetDel().GetUid())
	case req.GetKeep() != nil:
		closeAll(fds)
		mark(req.GetKeep().GetUid(), true)
		return nil
	case req.GetSnapshotSent() != nil:
		closeAll(fds)
		return h.Reconcile(ctx, snapshot())
	default:
		closeAll(fds)
		return errors.New("zds: unknown request")
	}
}

// podFrom validates an Add and adopts its three descriptors (netns,
// SOCKMAP, bypass map), closing them on any error.
func podFrom(a *zds.AddWorkload, fds []int) (*Pod, error) {
	if len(fds) != 3 {
		closeAll(fds)
		return nil, fmt.Errorf("zds: add %s carried %d descriptors, want 3 (netns, sockmap, bypass)", a.GetUid(), len(fds))
	}
	p := &Pod{UID: a.GetUid(), Name: a.GetWorkloadInfo().GetName(), Namespace: a.GetWorkloadInfo().GetNamespace(),
		ServiceAccount: a.GetWorkloadInfo().GetServiceAccount()}
	var err error
	if p.UID == "" {
		err = errors.New("zds: add without uid")
	}
	for _, s := range a.GetIps() {
		ip, perr := netip.ParseAddr(s)
		if perr != nil && err == nil {
			err = fmt.Errorf("zds: add %s: ip %q: %w", p.UID, s, perr)
		}
		p.IPs = append(p.IPs, ip)
	}
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	if p.Maps, err = bpf.NewPodMaps(fds[1], fds[2]); err != nil {
		closeAll(fds[:1])
		return nil, fmt.Errorf("zds: add %s: %w", p.UID, err)
	}
	if p.Netns, err = Open(fds[0]); err != nil {
		p.Maps.Close()
		return nil, fmt.Errorf("zds: add %s: %w", p.UID, err)
	}
	return p, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
