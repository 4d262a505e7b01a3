package inpod

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds"
	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/e2e/netenv"
)

// gate is a ztunnel stand-in whose AddPod of one pod hangs until released,
// as when that pod's certificate cannot be had.
type gate struct {
	hang    string
	release chan struct{}

	mu     sync.Mutex
	events []string
	kept   map[string]bool
}

func (g *gate) note(e string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.events = append(g.events, e)
}

func (g *gate) AddPod(ctx context.Context, p *Pod) error {
	if p.UID == g.hang {
		<-g.release
	}
	p.Netns.Close()
	p.Maps.Close()
	g.note("add " + p.UID)
	return nil
}

func (g *gate) DelPod(ctx context.Context, uid string) error {
	g.note("del " + uid)
	return nil
}

func (g *gate) Reconcile(ctx context.Context, keep map[string]bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.kept = keep
	return nil
}

// ztunnel's ZDS client handles pods' Adds at once and acks each, naming
// its pod, when done: while pod a's Add hangs, pod b's is acked; a's Del,
// sent behind its Add, runs only after that Add; SnapshotSent waits for
// everything before it.
func TestZDSClientSlowAddHoldsUpNoOtherPod(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "zds.sock")
	ln, err := zds.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ns, err := netenv.NewNS("zdsslow")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	maps, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maps.Close() })

	g := &gate{hang: "a", release: make(chan struct{})}
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(g.release) }) }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { RunZDS(ctx, sock, g, nil) })
	t.Cleanup(func() { unblock(); cancel(); wg.Wait() })

	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var hello zds.ZdsHello
	fds, err := c.Recv(&hello)
	closeAll(fds)
	if err != nil || !hello.GetAcksNamePod() {
		t.Fatalf("hello %v, %v: want acks_name_pod", &hello, err)
	}
	acks := make(chan *zds.Ack, 8)
	go func() {
		defer close(acks)
		for {
			var resp zds.WorkloadResponse
			fds, err := c.Recv(&resp)
			closeAll(fds)
			if err != nil {
				return
			}
			acks <- resp.GetAck()
		}
	}()
	nextAck := func(what string) *zds.Ack {
		t.Helper()
		select {
		case a, ok := <-acks:
			if !ok {
				t.Fatalf("connection ended waiting for %s", what)
			}
			return a
		case <-time.After(10 * time.Second):
			unblock()
			t.Fatalf("no ack for %s", what)
		}
		return nil
	}
	add := func(uid string) {
		t.Helper()
		nsfd, err := unix.FcntlInt(uintptr(ns.Handle()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		lfd, bfd, err := maps.MapFDs()
		if err != nil {
			t.Fatal(err)
		}
		defer closeAll([]int{nsfd, lfd, bfd})
		req := &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Add{Add: &zds.AddWorkload{
			Uid: uid, WorkloadInfo: &zds.WorkloadInfo{Name: uid, Namespace: "ns", ServiceAccount: "sa"},
			Ips: []string{"10.1.0.9"}}}}
		if err := c.Send(req, nsfd, lfd, bfd); err != nil {
			t.Fatal(err)
		}
	}
	send := func(req *zds.WorkloadRequest) {
		t.Helper()
		if err := c.Send(req); err != nil {
			t.Fatal(err)
		}
	}

	add("a")
	send(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Del{Del: &zds.DelWorkload{Uid: "a"}}})
	add("b")
	if a := nextAck("b's Add"); a.GetUid() != "b" || a.GetError() != "" {
		t.Fatalf("first ack %v, want b's (a's Add hangs)", a)
	}
	unblock()
	if a := nextAck("a's Add"); a.GetUid() != "a" || a.GetError() != "" {
		t.Fatalf("ack %v, want a's Add", a)
	}
	if a := nextAck("a's Del"); a.GetUid() != "a" || a.GetError() != "" {
		t.Fatalf("ack %v, want a's Del", a)
	}
	send(&zds.WorkloadRequest{Payload: &zds.WorkloadRequest_SnapshotSent{SnapshotSent: &zds.SnapshotSent{}}})
	if a := nextAck("SnapshotSent"); a.GetUid() != "" || a.GetError() != "" {
		t.Fatalf("ack %v, want SnapshotSent's", a)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if want := []string{"add b", "add a", "del a"}; !slices.Equal(g.events, want) {
		t.Fatalf("handled %v, want %v", g.events, want)
	}
	if len(g.kept) != 1 || !g.kept["b"] {
		t.Fatalf("reconciled with %v, want only b", g.kept)
	}
}
