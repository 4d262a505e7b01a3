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
	var err error
	mesh, err = cluster.Start(ctx, cluster.Options{App: podapp.Env, Out: os.Stdout, Keep: os.Getenv("ZMESH_E2E_KEEP") != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start the cluster:", err)
		if mesh != nil {
			mesh.Close()
		}
		return 1
	}
	// Ctrl-C, SIGTERM, or the test timeout drawing near: tear down first.
	teardown := make(chan struct{})
	var closeOnce = make(chan struct{}, 1)
	closeOnce <- struct{}{}
	closeMesh := func(why string) {
		select {
		case <-closeOnce:
		default:
			return
		}
		if why != "" {
			fmt.Fprintf(os.Stderr, "e2e: %s: removing the cluster\n", why)
		}
		if err := mesh.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: close:", err)
		}
		close(teardown)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		if s, ok := <-sigs; ok {
			closeMesh(s.String())
			os.Exit(130)
		}
	}()
	if to := flag.Lookup("test.timeout"); to != nil {
		if d, _ := time.ParseDuration(to.Value.String()); d > time.Minute {
			watchdog := time.AfterFunc(d-time.Since(start)-40*time.Second, func() {
				closeMesh("the test timeout is near")
				os.Exit(1)
			})
			defer watchdog.Stop()
		}
	}

	code := m.Run()
	signal.Stop(sigs)
	closeMesh("")
	<-teardown
	left := mesh.Leftovers()
	for _, l := range left {
		fmt.Fprintln(os.Stderr, "e2e: left behind:", l)
	}
	if len(left) > 0 && code == 0 {
		code = 1
	}
	if len(left) == 0 {
		fmt.Println("cluster: removed; nothing left behind (namespaces, links, mounts, bpffs pins, processes, temp dir)")
	}
	fmt.Printf("e2e/l4: wall time %s\n", time.Since(start).Round(100*time.Millisecond))
	return code
}
