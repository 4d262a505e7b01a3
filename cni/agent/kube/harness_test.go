package kube_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/cni/agent/kube"
	"github.com/zmesh/zmesh/cni/cniapi"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
	"github.com/zmesh/zmesh/ztunnel/inpod"
	"github.com/zmesh/zmesh/ztunnel/proxy"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

var env *kubetest.Env

func TestMain(m *testing.M) {
	var err error
	env, err = kubetest.Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "start API server:", err)
		os.Exit(1)
	}
	code := m.Run()
	env.Stop()
	os.Exit(code)
}

var nodeSeq int

// node is one node: a LAN for its pods, a bpffs root, a real ztunnel fed
// by a stand-in zmeshd (watching the pods and advertising a pod as HBONE
// only while it carries the redirection annotation, as zmeshd does),
// and the agent under test, which can be stopped and started again.
type node struct {
	t       *testing.T
	name    string
	lan     *netenv.LAN
	bpfRoot string
	zdsPath string
	store   *state.Store
	logs    *testutil.SyncBuffer
	log     *slog.Logger
	proxy   *proxy.Proxy

	agent *runningAgent

	mu          sync.Mutex
	annotations map[string]bool      // uid -> annotated, as zmeshd saw it last
	changedAt   map[string]time.Time // uid -> when zmeshd saw it change
}

type runningAgent struct {
	node   *agent.Node
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newNode(t *testing.T, prefix string) *node {
	t.Helper()
	nodeSeq++
	n := &node{t: t, name: fmt.Sprintf("node-%d", nodeSeq), store: state.NewStore(), logs: &testutil.SyncBuffer{},
		annotations: map[string]bool{}, changedAt: map[string]time.Time{}}
	n.log = slog.New(slog.NewJSONHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node %s log:\n%s", n.name, n.logs.String())
		}
	})
	lan, err := netenv.NewLAN(netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatalf("need root and netns support: %v", err)
	}
	t.Cleanup(func() { lan.Close() })
	n.lan = lan
	dir := t.TempDir()
	n.bpfRoot, n.zdsPath = filepath.Join(dir, "bpf"), filepath.Join(dir, "zds.sock")
	if err := os.Mkdir(n.bpfRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", n.bpfRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(n.bpfRoot, unix.MNT_DETACH) })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	_, err = env.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Nodes().Delete(context.Background(), n.name, metav1.DeleteOptions{}) })
	n.startZtunnel(ctx, &wg)
	wg.Go(func() { n.zmeshd(ctx) })
	return n
}

func (n *node) startZtunnel(ctx context.Context, wg *sync.WaitGroup) {
	t := n.t
	ca, err := identity.LoadOrCreateCA(t.TempDir(), identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewManager(identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
		return ca.Issue(id, time.Hour)
	}), ca.Bundle(), identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.New(prometheus.NewRegistry(), n.log)
	if err != nil {
		t.Fatal(err)
	}
	n.proxy, err = proxy.New(proxy.Config{Node: n.name, State: n.store, Certs: certs, Telemetry: tel, Log: n.log, Grace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	zctx, zcancel := context.WithCancel(ctx)
	var zwg sync.WaitGroup
	zwg.Go(func() { certs.Run(zctx) })
	zwg.Go(func() { inpod.RunZDS(zctx, n.zdsPath, n.proxy, n.log) })
	t.Cleanup(func() {
		zcancel()
		dctx, cancel := context.WithTimeout(context.Background(), 0)
		cancel()
		n.proxy.Drain(dctx)
		zwg.Wait()
	})
}

// zmeshd advertises the node's pods to its ztunnel: HBONE while annotated.
func (n *node) zmeshd(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := env.Client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		pods := map[types.UID]*corev1.Pod{}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(pods, p.UID)
			} else {
				pods[p.UID] = p
			}
			on := p.Annotations[kube.AnnotationRedirection] == kube.RedirectionEnabled
			n.mu.Lock()
			if was, seen := n.annotations[string(p.UID)]; !seen || was != on {
				n.annotations[string(p.UID)] = on
				n.changedAt[string(p.UID)] = time.Now()
			}
			n.mu.Unlock()
			u := state.Update{Addresses: map[string]*workload.Address{}, Policies: map[string]*security.Authorization{}}
			for _, p := range pods {
				if p.Status.PodIP == "" {
					continue
				}
				wl := &workload.Workload{
					Uid: "Kubernetes//Pod/" + p.Namespace + "/" + p.Name, Name: p.Name, Namespace: p.Namespace,
					Addresses: [][]byte{netip.MustParseAddr(p.Status.PodIP).AsSlice()}, ServiceAccount: "default",
					WorkloadName: p.Name, CanonicalName: p.Name, CanonicalRevision: "v1", Node: n.name,
				}
				if p.Annotations[kube.AnnotationRedirection] == kube.RedirectionEnabled {
					wl.TunnelProtocol = workload.TunnelProtocol_HBONE
				}
				u.Addresses[wl.Uid] = &workload.Address{Type: &workload.Address_Workload{Workload: wl}}
			}
			if err := n.store.Replace(u); err != nil {
				n.t.Errorf("zmeshd push: %v", err)
			}
		}
		w.Stop()
	}
}

// startAgent runs the agent as zmesh-cni-agent wires it: informers, restore
// from the pins, ZDS server, reconciler.
func (n *node) startAgent() {
	t := n.t
	t.Helper()
	m, err := kube.New(kube.Config{Client: env.Client, Node: n.name, ExcludedNamespaces: []string{"kube-system"}, Log: n.log})
	if err != nil {
		t.Fatal(err)
	}
	zds, err := agent.NewZDSServer(n.zdsPath, n.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &runningAgent{cancel: cancel}
	a.node = &agent.Node{BPFRoot: n.bpfRoot, ZDS: zds, Members: m, HostNetns: n.lan.Underlay.Handle(), Log: n.log}
	a.wg.Go(func() { m.Run(ctx) })
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := m.WaitSynced(sctx); err != nil {
		t.Fatal(err)
	}
	if err := a.node.Restore(ctx, "/proc", m.Pod); err != nil {
		t.Errorf("restore: %v", err)
	}
	rec := &agent.Reconciler{Node: a.node, Source: m, Status: m, ProcRoot: "/proc", ReleaseDelay: time.Second, Resync: time.Second, Log: n.log}
	a.wg.Go(func() { zds.Run(ctx) })
	a.wg.Go(func() { rec.Run(ctx) })
	n.agent = a
	t.Cleanup(n.stopAgent)
}

// stopAgent stops the agent as SIGTERM does: nothing is released.
func (n *node) stopAgent() {
	if n.agent == nil {
		return
	}
	n.agent.cancel()
	n.agent.wg.Wait()
	n.agent = nil
}

// pod is a running pod: an API object with its status set, a netns on
// the node's LAN and a process in it (how the agent finds the netns).
type pod struct {
	ns        *netenv.NS
	ip        netip.Addr
	name      string
	namespace string
	uid       string
}

func createNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	_, err := env.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func labelNamespace(t *testing.T, name, mode string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, kube.LabelDataplaneMode, mode)
	if mode == "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, kube.LabelDataplaneMode)
	}
	if _, err := env.Client.CoreV1().Namespaces().Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (n *node) newPod(namespace, name string, labels map[string]string) *pod {
	t := n.t
	t.Helper()
	ns, ip, err := n.lan.Host(name)
	if err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("ip", "netns", "exec", ns.Name, "sleep", "3600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	ctx := context.Background()
	obj, err := env.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		env.Client.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	obj.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := env.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := &pod{ns: ns, ip: ip, name: name, namespace: namespace, uid: string(obj.UID)}
	// Whatever the test did, the pod leaves no capture behind.
	t.Cleanup(func() {
		if n.agent != nil {
			n.agent.node.Del(context.Background(), &cniapi.Pod{UID: p.uid, Name: name, Namespace: namespace})
		}
	})
	return p
}

// annotated reports whether the pod carries the redirection annotation, as
// the stand-in zmeshd's watch saw it last (the view peers get).
func (n *node) annotated(p *pod) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.annotations[p.uid]
}

// annotationChanged is when zmeshd saw the pod's annotation change last.
func (n *node) annotationChanged(p *pod) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changedAt[p.uid]
}

func (n *node) pinned(p *pod) bool {
	_, err := os.Stat(filepath.Join(n.bpfRoot, p.uid, "link"))
	return err == nil
}

func (n *node) served(p *pod) bool {
	for _, pi := range n.proxy.Pods() {
		if pi.UID == p.uid {
			return true
		}
	}
	return false
}

// serve answers "<peer ip>|<what it read>" after the client half-closes.
func (p *pod) serve(t *testing.T, port uint16) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(p.ip, port)
	ln, err := p.ns.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var buf bytes.Buffer
				buf.ReadFrom(c)
				fmt.Fprintf(c, "%s|%s", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), buf.String())
			})
		}
	})
	return addr
}

// call connects from the pod, sends msg, half-closes, returns the reply.
func (p *pod) call(dst netip.AddrPort, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := p.ns.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(c); err != nil {
		return buf.String(), err
	}
	return buf.String(), nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}
