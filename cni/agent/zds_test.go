package agent

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/api/zds"
	"github.com/zmesh/zmesh/api/zds/zdstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testPod opens three real descriptors standing for netns and maps: files
// whose inodes the fake ztunnel reports back.
func testPod(t *testing.T, uid string) (*Pod, []uint64) {
	t.Helper()
	var fds []int
	var inodes []uint64
	for i := range 3 {
		f, err := os.Create(filepath.Join(t.TempDir(), uid+string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		fds = append(fds, fd)
		inodes = append(inodes, st.Ino)
	}
	return &Pod{
		UID: uid, Name: "name-" + uid, Namespace: "ns", ServiceAccount: "sa",
		IPs:     []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")},
		NetnsFD: fds[0], SockmapFD: fds[1], BypassFD: fds[2],
	}, inodes
}

func connect(t *testing.T, s *ZDSServer, path string, refuse func(*zds.WorkloadRequest) string) *zdstest.Ztunnel {
	t.Helper()
	z, err := zdstest.Connect(path, refuse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	waitZtunnel(t, s)
	return z
}

func waitZtunnel(t *testing.T, s *ZDSServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitZtunnel(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAddPodWaitsForAck(t *testing.T) {
	s, path := startServerWith(t)
	p, inodes := testPod(t, "uid-1")
	if err := s.AddPod(context.Background(), p); !errors.Is(err, ErrNoZtunnel) {
		t.Fatalf("AddPod with no ztunnel: %v, want ErrNoZtunnel", err)
	}
	z := connect(t, s, path, nil)
	if err := s.AddPod(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	reqs := z.Requests()
	add := reqs[len(reqs)-1]
	a := add.Msg.GetAdd()
	if a == nil || a.GetUid() != "uid-1" || a.GetWorkloadInfo().GetServiceAccount() != "sa" || strings.Join(a.GetIps(), ",") != "10.1.0.5,fd00::5" {
		t.Fatalf("ztunnel received %v", add.Msg)
	}
	if len(add.Inodes) != 3 || add.Inodes[0] != inodes[0] || add.Inodes[1] != inodes[1] || add.Inodes[2] != inodes[2] {
		t.Fatalf("descriptors received %v, sent %v (netns, sockmap, bypass in order)", add.Inodes, inodes)
	}
	if err := s.DelPod(context.Background(), "uid-1"); err != nil {
		t.Fatal(err)
	}
	reqs = z.Requests()
	if reqs[len(reqs)-1].Msg.GetDel().GetUid() != "uid-1" {
		t.Fatalf("last request %v, want Del uid-1", reqs[len(reqs)-1].Msg)
	}
}

func TestRefusalReachesCaller(t *testing.T) {
	s, path := startServerWith(t)
	connect(t, s, path, func(r *zds.WorkloadRequest) string {
		if r.GetAdd() != nil {
			return "no certificate for spiffe://cluster.local/ns/ns/sa/sa"
		}
		return ""
	})
	p, _ := testPod(t, "uid-2")
	err := s.AddPod(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Fatalf("AddPod = %v, want ztunnel's refusal", err)
	}
}

// A new ztunnel gets every pod the agent holds, then SnapshotSent; new pods
// go to it only.
func TestReconnectReplaysSnapshot(t *testing.T) {
	s, path := startServerWith(t)
	old := connect(t, s, path, nil)
	for _, uid := range []string{"a", "b"} {
		p, _ := testPod(t, uid)
		if err := s.AddPod(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	fresh, err := zdstest.Connect(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	reqs, err := fresh.WaitFor(3)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range reqs[:2] {
		got[r.Msg.GetAdd().GetUid()] = len(r.Inodes) == 3
	}
	if !got["a"] || !got["b"] || reqs[2].Msg.GetSnapshotSent() == nil {
		t.Fatalf("snapshot = %v", reqs)
	}
	// The new connection becomes newest once its SnapshotSent is acked.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		isNew := s.newest != nil && len(s.conns) == 2 && s.gen >= 2
		s.mu.Unlock()
		if isNew || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	before := len(old.Requests())
	p, _ := testPod(t, "c")
	if err := s.AddPod(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if reqs := fresh.Requests(); reqs[len(reqs)-1].Msg.GetAdd().GetUid() != "c" {
		t.Fatalf("newest ztunnel did not get the new pod: %v", reqs)
	}
	if len(old.Requests()) != before {
		t.Fatal("the replaced ztunnel was sent a new pod")
	}
}

// A ztunnel that exits makes the next AddPod fail with ErrNoZtunnel, not
// hang.
func TestZtunnelGone(t *testing.T) {
	s, path := startServerWith(t)
	z, err := zdstest.Connect(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitZtunnel(t, s)
	z.Close()
	p, _ := testPod(t, "gone")
	if err := s.AddPod(context.Background(), p); !errors.Is(err, ErrNoZtunnel) {
		t.Fatalf("AddPod after ztunnel exit: %v", err)
	}
}
