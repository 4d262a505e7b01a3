package wds_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/zds/zdstest"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/agent/wds"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/internal/xdsclient"
)

// ads is a stand-in zmeshd: it sends every Address it holds on a new
// stream and each change to the open one.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu      sync.Mutex
	wls     map[string]*workload.Workload
	streams []chan *discoveryv3.DeltaDiscoveryResponse
	nonce   int
}

func (a *ads) resp(updated []*workload.Workload, removed []string) *discoveryv3.DeltaDiscoveryResponse {
	a.nonce++
	r := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: xdsclient.TypeAddress, Nonce: fmt.Sprint(a.nonce), RemovedResources: removed}
	for _, w := range updated {
		body, _ := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: w}})
		r.Resources = append(r.Resources, &discoveryv3.Resource{Name: w.Uid, Version: fmt.Sprint(a.nonce), Resource: body})
	}
	return r
}

func (a *ads) push(w *workload.Workload) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.wls[w.Uid] = w
	r := a.resp([]*workload.Workload{w}, nil)
	for _, s := range a.streams {
		s <- r
	}
}

func (a *ads) DeltaAggregatedResources(s grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	out := make(chan *discoveryv3.DeltaDiscoveryResponse, 16)
	go func() {
		for {
			req, err := s.Recv()
			if err != nil {
				return
			}
			if req.ResponseNonce != "" || req.TypeUrl != xdsclient.TypeAddress {
				continue
			}
			a.mu.Lock()
			var all []*workload.Workload
			for _, w := range a.wls {
				all = append(all, w)
			}
			out <- a.resp(all, nil)
			a.streams = append(a.streams, out)
			a.mu.Unlock()
		}
	}()
	for {
		select {
		case r := <-out:
			if err := s.Send(r); err != nil {
				return nil
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

// TestEnrolFromWorkloadStream: with no cluster, a running pod of this node
// is captured once zmeshd lists it as HBONE and released when it no longer
// does; workloads of other nodes are ignored.
func TestEnrolFromWorkloadStream(t *testing.T) {
	cp, conn := startADS(t)

	lan, err := netenv.NewLAN(netip.MustParsePrefix("10.74.0.0/24"))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() { lan.Close() })
	podNS, podIP, err := lan.Host("web")
	if err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("ip", "netns", "exec", podNS.Name, "sleep", "3600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })

	dir := t.TempDir()
	bpfRoot := filepath.Join(dir, "bpf")
	os.Mkdir(bpfRoot, 0o700)
	if err := unix.Mount("bpf", bpfRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpfRoot, unix.MNT_DETACH) })

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	m, err := wds.New(wds.Config{Conn: conn, Node: "node-a", LookupWait: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	zdsPath := filepath.Join(dir, "zds.sock")
	zsrv, err := agent.NewZDSServer(zdsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	node := &agent.Node{BPFRoot: bpfRoot, ZDS: zsrv, Members: m, HostNetns: lan.Underlay.Handle()}
	wg.Go(func() { m.Run(ctx) })
	wg.Go(func() { zsrv.Run(ctx) })
	z, err := zdstest.Connect(zdsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	rec := &agent.Reconciler{Node: node, Source: m, ReleaseDelay: 100 * time.Millisecond, Resync: 200 * time.Millisecond}
	wg.Go(func() { rec.Run(ctx) })

	wl := &workload.Workload{
		Uid: "Kubernetes//Pod/demo/web", Name: "web", Namespace: "demo", ServiceAccount: "web-sa",
		Addresses: [][]byte{podIP.AsSlice()}, Node: "node-a",
	}
	other := &workload.Workload{
		Uid: "Kubernetes//Pod/demo/elsewhere", Name: "elsewhere", Namespace: "demo",
		Addresses: [][]byte{netip.MustParseAddr("10.74.0.200").AsSlice()}, Node: "node-b",
		TunnelProtocol: workload.TunnelProtocol_HBONE,
	}
	cp.push(wl)
	cp.push(other)
	uid := wds.PodUID("demo", "web")
	pinned := func() bool { _, err := os.Stat(filepath.Join(bpfRoot, uid, "link")); return err == nil }
	time.Sleep(500 * time.Millisecond)
	if pinned() {
		t.Fatal("a pod zmeshd does not list as HBONE was captured")
	}
	if sa, ambient, err := m.Lookup(ctx, "demo", "web"); err != nil || ambient || sa != "web-sa" {
		t.Fatalf("Lookup(web) = %q, %v, %v before HBONE", sa, ambient, err)
	}
	if _, ambient, err := m.Lookup(ctx, "demo", "elsewhere"); ambient || !errors.Is(err, agent.ErrMembershipUnknown) {
		t.Fatalf("Lookup of a workload of another node = %v, %v; want ErrMembershipUnknown", ambient, err)
	}

	hbone := proto.Clone(wl).(*workload.Workload)
	hbone.TunnelProtocol = workload.TunnelProtocol_HBONE
	cp.push(hbone)
	waitFor(t, "the pod captured", pinned)
	reqs, err := z.WaitFor(2) // snapshot end, then the pod
	if err != nil {
		t.Fatal(err)
	}
	add := reqs[1].Msg.GetAdd()
	if add.GetUid() != uid || add.GetWorkloadInfo().GetServiceAccount() != "web-sa" || len(reqs[1].Inodes) != 3 {
		t.Fatalf("ztunnel got %v with %d fds, want the pod %s with 3", reqs[1].Msg, len(reqs[1].Inodes), uid)
	}
	if sa, ambient, err := m.Lookup(ctx, "demo", "web"); err != nil || !ambient || sa != "web-sa" {
		t.Fatalf("Lookup(web) = %q, %v, %v after HBONE", sa, ambient, err)
	}

	cp.push(wl) // back to plain
	waitFor(t, "the pod released", func() bool { return !pinned() })
	reqs, err = z.WaitFor(3)
	if err != nil {
		t.Fatal(err)
	}
	if reqs[2].Msg.GetDel().GetUid() != uid {
		t.Fatalf("ztunnel got %v, want the pod's Del", reqs[2].Msg)
	}
	var rules int
	podNS.Do(func() error {
		rs, _ := podNS.Netlink().RuleList(unix.AF_INET)
		for _, r := range rs {
			if r.Table == 100 {
				rules++
			}
		}
		return nil
	})
	if rules != 0 {
		t.Fatal("capture routing left in the pod after release")
	}
}

// startADS serves a stand-in zmeshd on loopback and returns a connection
// to it.
func startADS(t *testing.T) (*ads, *grpc.ClientConn) {
	t.Helper()
	cp := &ads{wls: map[string]*workload.Workload{}}
	srv := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, cp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cp, conn
}

// TestLookupMissWaitsForTheStream: CNI ADD often runs before zmeshd's
// stream lists the new pod. A miss is not "not ambient": Lookup waits for
// the pod to be listed, and fails (so the runtime retries) when it is not
// listed within the bound; with zmeshd not answering at all, it fails too.
func TestLookupMissWaitsForTheStream(t *testing.T) {
	cp, conn := startADS(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	m, err := wds.New(wds.Config{Conn: conn, Node: "node-a", LookupWait: 5 * time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cp.push(&workload.Workload{Uid: "Kubernetes//Pod/demo/old", Name: "old", Namespace: "demo", Node: "node-a"})
	wg.Go(func() { m.Run(ctx) })
	if err := m.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	type answer struct {
		sa      string
		ambient bool
		err     error
	}
	got := make(chan answer, 1)
	go func() {
		sa, ambient, err := m.Lookup(ctx, "demo", "new")
		got <- answer{sa, ambient, err}
	}()
	select {
	case a := <-got:
		t.Fatalf("Lookup of a pod the stream does not list yet answered at once: %+v", a)
	case <-time.After(300 * time.Millisecond):
	}
	cp.push(&workload.Workload{Uid: "Kubernetes//Pod/demo/new", Name: "new", Namespace: "demo", Node: "node-a",
		ServiceAccount: "new-sa", TunnelProtocol: workload.TunnelProtocol_HBONE})
	select {
	case a := <-got:
		if a.err != nil || !a.ambient || a.sa != "new-sa" {
			t.Fatalf("Lookup(new) = %+v once listed, want new-sa, ambient", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lookup did not answer once the stream listed the pod")
	}

	short, err := wds.New(wds.Config{Conn: conn, Node: "node-a", LookupWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Not running: no response ever comes.
	if _, ambient, err := short.Lookup(ctx, "demo", "old"); ambient || !errors.Is(err, agent.ErrMembershipUnknown) {
		t.Fatalf("Lookup with no response from zmeshd = %v, %v; want ErrMembershipUnknown", ambient, err)
	}
	wg.Go(func() { short.Run(ctx) })
	if err := short.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ambient, err := short.Lookup(ctx, "demo", "never"); ambient || !errors.Is(err, agent.ErrMembershipUnknown) {
		t.Fatalf("Lookup of a pod never listed = %v, %v; want ErrMembershipUnknown", ambient, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWaypointIsNotCaptured: a waypoint is reached over HBONE but
// terminates it itself (native_tunnel). Without a cluster the agent knows
// it only from the stream: capturing it would hand its port 15008 to
// ztunnel, so it is not ambient.
func TestWaypointIsNotCaptured(t *testing.T) {
	cp, conn := startADS(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	m, err := wds.New(wds.Config{Conn: conn, Node: "node-a", MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cp.push(&workload.Workload{Uid: "Kubernetes//Pod/demo/waypoint-0", Name: "waypoint-0", Namespace: "demo", Node: "node-a",
		ServiceAccount: "waypoint", TunnelProtocol: workload.TunnelProtocol_HBONE, NativeTunnel: true,
		Addresses: [][]byte{netip.MustParseAddr("10.74.0.9").AsSlice()}})
	wg.Go(func() { m.Run(ctx) })
	if sa, ambient, err := m.Lookup(ctx, "demo", "waypoint-0"); err != nil || ambient || sa != "waypoint" {
		t.Fatalf("Lookup(waypoint) = %q, %v, %v; want waypoint, not ambient", sa, ambient, err)
	}
	for _, p := range m.Pods() {
		if p.Name == "waypoint-0" && p.Ambient {
			t.Fatal("Pods lists the waypoint as ambient")
		}
	}
}
