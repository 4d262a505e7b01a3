package inpod

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/e2e/netenv"
)

// recorder is a ztunnel stand-in behind the real ZDS client: it opens a
// listener in each pod it is given, as ztunnel does before acking.
type recorder struct {
	mu     sync.Mutex
	pods   map[string]*Pod
	refuse string
	kept   map[string]bool
}

func (r *recorder) AddPod(ctx context.Context, p *Pod) error {
	r.mu.Lock()
	refuse := r.refuse
	r.mu.Unlock()
	if refuse != "" {
		return errors.New(refuse)
	}
	ln, err := p.Netns.Listen(netip.MustParseAddrPort("0.0.0.0:15001"), ListenOptions{Transparent: true})
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := Steer(p.Maps, bpf.Outbound, ln); err != nil {
		return err
	}
	r.mu.Lock()
	r.pods[p.UID] = p
	r.mu.Unlock()
	return nil
}

func (r *recorder) DelPod(ctx context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.pods[uid]; p != nil {
		p.Netns.Close()
		p.Maps.Close()
		delete(r.pods, uid)
	}
	return nil
}

func (r *recorder) Reconcile(ctx context.Context, keep map[string]bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kept = keep
	return nil
}

// The agent's ZDS server and ztunnel's ZDS client meet: a pod's netns and
// capture maps cross as descriptors, ztunnel opens its listener inside the
// pod and steers capture to it before the agent's AddPod returns.
func TestZDSClientMeetsAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "zds.sock")
	srv, err := agent.NewZDSServer(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Run(ctx) })
	rec := &recorder{pods: map[string]*Pod{}}
	wg.Go(func() { RunZDS(ctx, sock, rec, nil) })
	defer func() { cancel(); wg.Wait() }()
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := srv.WaitZtunnel(wctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	reconciled := rec.kept != nil
	rec.mu.Unlock()
	if !reconciled {
		t.Error("no Reconcile after the (empty) snapshot")
	}

	ns, err := netenv.NewNS("zdspod")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pod := func(uid string) *agent.Pod {
		nsfd, _ := unix.FcntlInt(uintptr(ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
		lfd, bfd, err := c.MapFDs()
		if err != nil {
			t.Fatal(err)
		}
		return &agent.Pod{UID: uid, Name: "web", Namespace: "amb", ServiceAccount: "sa",
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.9")}, NetnsFD: nsfd, SockmapFD: lfd, BypassFD: bfd}
	}
	if err := srv.AddPod(ctx, pod("uid-1")); err != nil {
		t.Fatalf("AddPod: %v", err)
	}
	rec.mu.Lock()
	got := rec.pods["uid-1"]
	rec.mu.Unlock()
	if got == nil || got.ServiceAccount != "sa" || got.IPs[0].String() != "10.1.0.9" {
		t.Fatalf("ztunnel got %+v", got)
	}
	rec.mu.Lock()
	rec.refuse = "no certificate for spiffe://cluster.local/ns/amb/sa/sa"
	rec.mu.Unlock()
	if err := srv.AddPod(ctx, pod("uid-2")); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Fatalf("refused AddPod: %v", err)
	}
	if err := srv.DelPod(ctx, "uid-1"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.pods) != 0 {
		t.Fatalf("pods left after Del: %v", rec.pods)
	}
}
