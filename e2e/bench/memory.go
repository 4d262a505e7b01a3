package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zmesh/zmesh/cni/agent"
	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/noderunner"
	"github.com/zmesh/zmesh/e2e/proc"
)

// measureMemory starts a third node's ztunnel with no pods, measures it
// idle, has zmeshd push workloads and services to it (a YAML file dropped
// into zmeshd's config directory), and measures it again once it has
// acknowledged them.
// With profileDir set, the loaded ztunnel's heap profile is saved there.
func (e *env) measureMemory(ctx context.Context, workloads, services int, profileDir string) (*report.Memory, error) {
	ports, err := freeAddrs(3)
	if err != nil {
		return nil, err
	}
	// The node has no pods: the node runner's in-process agent serves its
	// ztunnel's ZDS socket and nothing else.
	ndir := filepath.Join(e.tmp, memNode)
	if err := os.MkdirAll(ndir, 0o700); err != nil {
		return nil, err
	}
	none := agent.MembershipFunc(func(string, string) (string, bool) { return "", false })
	n, err := noderunner.Start(memNode, ndir, none, e.lan.Underlay.Handle(), e.log)
	if err != nil {
		return nil, err
	}
	e.defer_(func() { n.Close() })
	zt, err := e.startZtunnel(ctx, memNode, ndir, n.ZDSPath, ports)
	if err != nil {
		return nil, err
	}
	if err := e.waitSynced(ctx, memNode, nil); err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second) // let start-up garbage go
	m := &report.Memory{Workloads: workloads, Services: services}
	if m.IdleHeap, m.IdleRSS, err = zt.memory(ctx); err != nil {
		return nil, err
	}
	before, err := e.syncVersions(ctx, memNode)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := os.WriteFile(filepath.Join(e.meshDir, "90-scale.yaml"), []byte(scaleYAML(workloads, services)), 0o644); err != nil {
		return nil, err
	}
	if err := e.waitSynced(ctx, memNode, before); err != nil {
		return nil, err
	}
	m.SyncTime = time.Since(start).Seconds()
	time.Sleep(2 * time.Second)
	if m.LoadedHeap, m.LoadedRSS, err = zt.memory(ctx); err != nil {
		return nil, err
	}
	// Taking in the update peaks well above what stays live, and Go hands
	// the difference back to the OS in the background, over seconds and
	// with pauses: wait until the RSS has not fallen for 10 s (at most
	// 45 s), so the figure is the state's and not the update's.
	m.PeakRSS = m.LoadedRSS
	for still, i := 0, 0; still < 10 && i < 45; i++ {
		time.Sleep(time.Second)
		if rss := statusBytes(zt.Pid(), "VmRSS"); rss < m.LoadedRSS*0.995 {
			m.LoadedRSS, still = rss, 0
		} else {
			still++
		}
	}
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			return nil, err
		}
		if err := fetchTo(ctx, "http://"+zt.admin+"/debug/pprof/heap", filepath.Join(profileDir, "state-heap.pprof")); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// memory returns the ztunnel's live heap right after a GC (the heap
// profile endpoint runs one first with gc=1) and its RSS.
func (z *ztunnel) memory(ctx context.Context) (heap, rss float64, err error) {
	var body string
	for range 2 { // the second GC frees what the first one's finalizers left
		if body, err = proc.HTTPGet(ctx, "http://"+z.admin+"/debug/pprof/heap?gc=1&debug=1"); err != nil {
			return 0, 0, err
		}
	}
	heap, err = parseMemStatsLine([]byte(body), "HeapAlloc")
	return heap, statusBytes(z.Pid(), "VmRSS"), err
}

// syncz is what the bench reads of zmeshd's /debug/syncz.
type syncz []struct {
	Node  string `json:"node"`
	Kind  string `json:"kind"`
	Pod   string `json:"pod"`
	Types []struct {
		TypeURL       string `json:"typeUrl"`
		ServerVersion string `json:"serverVersion"`
		AckedVersion  string `json:"ackedVersion"`
		State         string `json:"state"`
	} `json:"types"`
}

// syncVersions returns the server version of each type zmeshd sends the
// node's ztunnel.
func (e *env) syncVersions(ctx context.Context, node string) (map[string]string, error) {
	return e.syncVersionsOf(ctx, func(n, kind, pod string) bool { return n == node && kind == "ztunnel" })
}

// syncVersionsOf is syncVersions for the proxies match selects by node,
// kind ("ztunnel", "router") and pod.
func (e *env) syncVersionsOf(ctx context.Context, match func(node, kind, pod string) bool) (map[string]string, error) {
	body, err := proc.HTTPGet(ctx, "http://"+e.zmeshdMon+"/debug/syncz")
	if err != nil {
		return nil, err
	}
	var s syncz
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		return nil, fmt.Errorf("syncz: %w", err)
	}
	out := map[string]string{}
	for _, p := range s {
		if !match(p.Node, p.Kind, p.Pod) {
			continue
		}
		for _, t := range p.Types {
			v := t.ServerVersion
			if t.State != "SYNCED" {
				v = "unsynced"
			}
			out[t.TypeURL] = v
		}
	}
	return out, nil
}

// waitSynced waits until the node has acknowledged every type, at a
// version other than before's for at least one type when before is given.
func (e *env) waitSynced(ctx context.Context, node string, before map[string]string) error {
	return e.waitSyncedOf(ctx, func(ctx context.Context) (map[string]string, error) { return e.syncVersions(ctx, node) }, before)
}

func (e *env) waitSyncedOf(ctx context.Context, versions func(context.Context) (map[string]string, error), before map[string]string) error {
	return proc.WaitFor(ctx, 3*time.Minute, func() bool {
		now, err := versions(ctx)
		if err != nil || len(now) == 0 {
			return false
		}
		changed := before == nil
		for t, v := range now {
			if v == "unsynced" {
				return false
			}
			if before != nil && before[t] != v {
				changed = true
			}
		}
		return changed
	})
}

// scaleYAML is a cluster of n ambient pods spread over 100 other nodes and
// s services selecting them in groups (the memory measurement's state).
func scaleYAML(n, s int) string {
	var b strings.Builder
	b.Grow(n*400 + s*300)
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scale\n  labels:\n    istio.io/dataplane-mode: ambient\n")
	per := max(1, n/max(1, s))
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-%d\n  namespace: scale\n  labels: {app: svc-%d}\nspec:\n  nodeName: scale-node-%d\n  serviceAccountName: sa-%d\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: 10.%d.%d.%d\n",
			i, i/per, i%100, i%100, 128+i/(250*250), (i/250)%250, i%250+1)
	}
	for j := range s {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-%d\n  namespace: scale\nspec:\n  clusterIP: 10.97.%d.%d\n  selector: {app: svc-%d}\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n",
			j, j/250, j%250+1, j)
	}
	return b.String()
}
