package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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

func serveZDS(ctx context.Context, path string, h Handler) error {
	c, err := zds.Dial(path)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1}); err != nil {
		return err
	}
	seen := map[string]bool{}
	for {
		var req zds.WorkloadRequest
		fds, err := c.Recv(&req)
		if err != nil {
			return err
		}
		herr := handle(ctx, h, &req, fds, seen)
		ack := &zds.Ack{}
		if herr != nil {
			ack.Error = herr.Error()
		}
		if err := c.Send(&zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: ack}}); err != nil {
			return err
		}
	}
}

func handle(ctx context.Context, h Handler, req *zds.WorkloadRequest, fds []int, seen map[string]bool) error {
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
		seen[p.UID] = true
		return nil
	case req.GetDel() != nil:
		closeAll(fds)
		delete(seen, req.GetDel().GetUid())
		return h.DelPod(ctx, req.GetDel().GetUid())
	case req.GetKeep() != nil:
		closeAll(fds)
		seen[req.GetKeep().GetUid()] = true
		return nil
	case req.GetSnapshotSent() != nil:
		closeAll(fds)
		return h.Reconcile(ctx, seen)
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
