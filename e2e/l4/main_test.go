// Package l4 is zmesh's end-to-end suite for the L4 ambient mesh: every
// scenario applies YAML from e2e/testdata with kubectl, as a user following
// Istio's documentation would, against one shared cluster (e2e/cluster: a
// real API server, zmeshd, and two network-namespace nodes each with its
// agent, ztunnel and node runner), and prints what the mesh did. Each
// scenario works in namespaces of its own, so they are independent.
package l4

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zmesh/zmesh/e2e/cluster"
	"github.com/zmesh/zmesh/e2e/podapp"
)

var mesh *cluster.Cluster

func TestMain(m *testing.M) {
	if podapp.IsApp() {
		podapp.Main() // this process is a pod's app, started by a node runner
		return
	}
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e/l4: skipped, needs root (network namespaces, eBPF)")
		return 0
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Ctrl-C or SIGTERM at any time, or the test timeout drawing near:
	// tear down first. While the cluster is starting, cancelling makes
	// Start remove what it made and return.
	var mu sync.Mutex
	var up, closed bool
	teardown := make(chan struct{})
	closeMesh := func(why string) bool {
		mu.Lock()
		defer mu.Unlock()
		if !up || closed {
			return false
		}
		closed = true
		if why != "" {
			fmt.Fprintf(os.Stderr, "e2e: %s: removing the cluster\n", why)
		}
		if err := mesh.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: close:", err)
		}
		close(teardown)
		return true
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		cancel()
		if closeMesh(s.String()) {
			reportLeftovers()
			os.Exit(130)
		}
	}()
	var err error
	mesh, err = cluster.Start(ctx, cluster.Options{App: podapp.Env, Out: os.Stdout, Keep: os.Getenv("ZMESH_E2E_KEEP") != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start the cluster:", err)
		return 1
	}
	mu.Lock()
	up = true
	mu.Unlock()
	if ctx.Err() != nil {
		closeMesh("interrupted")
		reportLeftovers()
		return 130
	}
	if to := flag.Lookup("test.timeout"); to != nil {
		if d, _ := time.ParseDuration(to.Value.String()); d > time.Minute {
			watchdog := time.AfterFunc(d-time.Since(start)-40*time.Second, func() {
				closeMesh("the test timeout is near")
				reportLeftovers()
				os.Exit(1)
			})
			defer watchdog.Stop()
		}
	}

	code := m.Run()
	if !closeMesh("") {
		<-teardown // a signal's teardown is under way; it exits
	}
	if len(reportLeftovers()) > 0 && code == 0 {
		code = 1
	}
	fmt.Printf("e2e/l4: wall time %s\n", time.Since(start).Round(100*time.Millisecond))
	return code
}

// reportLeftovers prints what the teardown left behind.
func reportLeftovers() []string {
	left := mesh.Leftovers()
	for _, l := range left {
		fmt.Fprintln(os.Stderr, "e2e: left behind:", l)
	}
	if len(left) == 0 {
		fmt.Println("cluster: removed; nothing left behind (namespaces, links, mounts, bpffs pins, processes, temp dir)")
	}
	return left
}
