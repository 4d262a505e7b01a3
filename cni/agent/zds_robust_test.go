package agent

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds"
	"github.com/zmesh/zmesh/api/zds/zdstest"
)

// startServerWith runs a ZDS server with opts on a socket in the test's
// directory until the test ends, and fails the test if Run fails.
func startServerWith(t *testing.T, opts ...ZDSOption) (*ZDSServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "zds.sock")
	s, err := NewZDSServer(path, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, path
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func addsOf(z *zdstest.Ztunnel, uid string) int {
	n := 0
	for _, r := range z.Requests() {
		if r.Msg.GetAdd().GetUid() == uid {
			n++
		}
	}
	return n
}

// A pod a new ztunnel refuses (no certificate for it, say) costs that pod
// only: the snapshot goes on, the ztunnel takes new pods, and the refused
// pod is offered again with backoff until ztunnel takes it.
func TestSnapshotGoesOnPastARefusedPod(t *testing.T) {
	s, path := startServerWith(t, WithRetryBackoff(20*time.Millisecond, 100*time.Millisecond))
	for _, uid := range []string{"a", "b", "c"} {
		p, _ := testPod(t, uid)
		if err := s.Keep(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	var refuseB atomic.Bool
	refuseB.Store(true)
	z := connect(t, s, path, func(r *zds.WorkloadRequest) string {
		if r.GetAdd().GetUid() == "b" && refuseB.Load() {
			return "no certificate for spiffe://cluster.local/ns/ns/sa/sa"
		}
		return ""
	})
	for _, uid := range []string{"a", "b", "c"} {
		if addsOf(z, uid) == 0 {
			t.Fatalf("snapshot did not offer pod %s: %v", uid, z.Requests())
		}
	}
	if f := s.Failed(); len(f) != 1 || f[0].UID != "b" || f[0].Reason == "" {
		t.Fatalf("Failed() = %+v, want pod b with ztunnel's reason", f)
	}
	if refusals, _ := s.Stats(); refusals == 0 {
		t.Fatal("refusal not counted")
	}
	d, _ := testPod(t, "d")
	if err := s.AddPod(context.Background(), d); err != nil {
		t.Fatalf("a new pod after a refused one: %v", err)
	}
	eventually(t, "pod b offered again", func() bool { return addsOf(z, "b") >= 2 })
	refuseB.Store(false)
	eventually(t, "pod b taken", func() bool { return len(s.Failed()) == 0 })

	// A refused pod that is deleted is no longer offered.
	refuseB.Store(true)
	fresh, err := zdstest.Connect(path, z.Refuse)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	eventually(t, "the new ztunnel refusing b", func() bool { f := s.Failed(); return len(f) == 1 && f[0].UID == "b" })
	if err := s.DelPod(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	if f := s.Failed(); len(f) != 0 {
		t.Fatalf("deleted pod still retried: %+v", f)
	}
}

// While a new ztunnel works through its snapshot (a pod's certificate can
// take seconds), CNI ADD of other pods goes on to the serving ztunnel.
func TestSlowSnapshotDoesNotBlockAddPod(t *testing.T) {
	s, path := startServerWith(t)
	connect(t, s, path, nil)
	slow, _ := testPod(t, "slow")
	if err := s.Keep(context.Background(), slow); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	held := make(chan struct{})
	next, err := zdstest.Connect(path, func(r *zds.WorkloadRequest) string {
		if r.GetAdd().GetUid() == "slow" {
			close(held)
			<-release
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the new ztunnel was not offered the pod")
	}
	added := make(chan error, 1)
	go func() {
		p, _ := testPod(t, "new")
		added <- s.AddPod(context.Background(), p)
	}()
	select {
	case err := <-added:
		if err != nil {
			t.Fatalf("AddPod during another ztunnel's snapshot: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AddPod blocked behind another ztunnel's snapshot")
	}
	close(release)
	// The pod added meanwhile reaches the new ztunnel before it takes over.
	eventually(t, "the new ztunnel taking over", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.gen >= 2 && len(s.conns) == 2 && s.newest != nil
	})
	if addsOf(next, "new") != 1 {
		t.Fatalf("the new ztunnel's snapshot lacks the pod added during it: %v", next.Requests())
	}
}

// dialAs connects to path from a thread running as uid. The thread is
// thrown away afterwards (its goroutine exits locked to it), so the
// process keeps its credentials.
func dialAs(t *testing.T, path string, uid int) (*zds.Conn, error) {
	t.Helper()
	type result struct {
		c   *zds.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			ch <- result{err: e}
			return
		}
		c, err := zds.Dial(path)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// Whoever talks to the ZDS socket is handed pods' namespaces: only root
// or the configured ztunnel uid is served, even if the socket file's mode
// lets others connect.
func TestZDSPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the test connects as another uid")
	}
	const nobody = 65534
	try := func(opts ...ZDSOption) (served bool, s *ZDSServer) {
		s, path := startServerWith(t, opts...)
		p, _ := testPod(t, "secret")
		if err := s.Keep(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		// The test's directories are private: let uid 65534 reach the socket.
		for _, d := range []string{filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := dialAs(t, path, nobody); err == nil {
			t.Fatal("uid 65534 connected to a 0600 socket of root's")
		}
		if err := os.Chmod(path, 0o666); err != nil {
			t.Fatal(err)
		}
		c, err := dialAs(t, path, nobody)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Send(&zds.ZdsHello{Version: zds.Version_V1}); err != nil {
			return false, s
		}
		var req zds.WorkloadRequest
		fds, err := c.Recv(&req)
		closeFDs(fds)
		if isGone(err) { // closed on us: EOF, or a reset since our hello went unread
			return false, s
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if req.GetAdd().GetUid() != "secret" || len(fds) != 3 {
			t.Fatalf("got %v with %d fds, want the pod's Add", &req, len(fds))
		}
		return true, s
	}
	served, s := try()
	if served {
		t.Fatal("a ztunnel running as uid 65534 was handed a pod; only root may connect by default")
	}
	if _, rejected := s.Stats(); rejected != 1 {
		t.Fatalf("rejected connections = %d, want 1", rejected)
	}
	if served, _ := try(WithPeerUID(nobody)); !served {
		t.Fatal("uid 65534, allowed with WithPeerUID, was not served")
	}
}
