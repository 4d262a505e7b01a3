package agent

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmesh/zmesh/api/zds"
	"github.com/zmesh/zmesh/api/zds/zdstest"
)

// A pod whose Add hangs on ztunnel's side (its certificate fetch waits
// for a CA that is down) delays no other pod: B's Add is sent, acked and
// its AddPod (so its CNI ADD) returns while A's is still pending.
func TestSlowPodDoesNotBlockAnotherPodsAdd(t *testing.T) {
	s, path := startServerWith(t)
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	z := connect(t, s, path, func(r *zds.WorkloadRequest) string {
		if r.GetAdd().GetUid() == "a" {
			once.Do(func() { close(held) })
			<-release
		}
		return ""
	})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before z.Close (cleanups run last first)
	a, _ := testPod(t, "a")
	aDone := make(chan error, 1)
	go func() { aDone <- s.AddPod(context.Background(), a) }()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("ztunnel was not offered pod a")
	}
	b, _ := testPod(t, "b")
	bDone := make(chan error, 1)
	go func() { bDone <- s.AddPod(context.Background(), b) }()
	select {
	case err := <-bDone:
		if err != nil {
			t.Fatalf("AddPod(b): %v", err)
		}
	case <-time.After(10 * time.Second):
		unblock()
		<-bDone
		t.Fatal("AddPod(b) waited for pod a's Add")
	}
	select {
	case err := <-aDone:
		t.Fatalf("AddPod(a) returned before ztunnel acked it: %v", err)
	default:
	}
	unblock()
	if err := <-aDone; err != nil {
		t.Fatalf("AddPod(a): %v", err)
	}
	if addsOf(z, "a") != 1 || addsOf(z, "b") != 1 {
		t.Fatalf("requests: %v", z.Requests())
	}
}

// A ztunnel whose acks name no pod (Istio's) is sent one request at a
// time: were it sent several, its acks could not be told apart and the
// AddPods would never return.
func TestSerialPeerGetsOneRequestAtATime(t *testing.T) {
	s, path := startServerWith(t)
	p, _ := testPod(t, "kept")
	if err := s.Keep(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	inFlight, most := 0, 0
	z, err := zdstest.ConnectSerial(path, func(r *zds.WorkloadRequest) string {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		inFlight--
		mu.Unlock()
		if r.GetAdd().GetUid() == "refused" {
			return "no certificate"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	waitZtunnel(t, s)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for _, uid := range []string{"p1", "p2", "p3", "p4", "refused"} {
		p, _ := testPod(t, uid)
		wg.Go(func() {
			err := s.AddPod(context.Background(), p)
			if uid == "refused" {
				if err == nil || !strings.Contains(err.Error(), "no certificate") {
					errs <- err
				}
				return
			}
			if err != nil {
				errs <- err
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("AddPods to a serial ztunnel did not return")
	}
	close(errs)
	for err := range errs {
		t.Errorf("AddPod: %v", err)
	}
	if err := s.DelPod(context.Background(), "p1"); err != nil {
		t.Fatal(err)
	}
	// kept + SnapshotSent + 5 Adds + 1 Del.
	if got := len(z.Requests()); got != 8 {
		t.Fatalf("%d requests: %v", got, z.Requests())
	}
	mu.Lock()
	defer mu.Unlock()
	if most != 1 {
		t.Fatalf("a serial ztunnel had %d requests at once", most)
	}
}

// Acks for no pending request (an unknown uid, or no uid when none is
// expected) are dropped: the connection and the requests on it go on.
func TestAckForUnknownPodIgnored(t *testing.T) {
	s, path := startServerWith(t)
	c, err := zds.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1, AcksNamePod: true}); err != nil {
		t.Fatal(err)
	}
	ack := func(uid, e string) {
		t.Helper()
		if err := c.Send(&zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: &zds.Ack{Uid: uid, Error: e}}}); err != nil {
			t.Fatal(err)
		}
	}
	var req zds.WorkloadRequest
	fds, err := c.Recv(&req)
	closeFDs(fds)
	if err != nil || req.GetSnapshotSent() == nil {
		t.Fatalf("want SnapshotSent, got %v, %v", &req, err)
	}
	ack("", "")
	waitZtunnel(t, s)
	ack("nobody", "")
	ack("nobody", "refused")
	ack("", "")
	p, _ := testPod(t, "real")
	done := make(chan error, 1)
	go func() { done <- s.AddPod(context.Background(), p) }()
	req.Reset()
	fds, err = c.Recv(&req)
	closeFDs(fds)
	if err != nil || req.GetAdd().GetUid() != "real" {
		t.Fatalf("want Add of real, got %v, %v", &req, err)
	}
	// A stray ack meanwhile is not taken for the pod's.
	ack("nobody", "refused")
	select {
	case err := <-done:
		t.Fatalf("AddPod returned on an ack for another pod: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	ack("real", "")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("AddPod after stray acks: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AddPod did not return")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.newest == nil {
		t.Fatal("stray acks dropped the connection")
	}
}
