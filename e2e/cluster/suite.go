package cluster

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
)

// RunSuite is an e2e package's TestMain body: it starts one cluster for
// the package's scenarios, hands it to use, runs the tests, and removes the
// cluster — also on Ctrl-C or SIGTERM at any time, and when the test
// timeout draws near — then reports anything left behind, which fails the
// run. It returns the exit code.
func RunSuite(m *testing.M, suite string, opts Options, use func(*Cluster)) int {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Printf("%s: skipped, needs root (network namespaces, eBPF)\n", suite)
		return 0
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mesh         *Cluster
		mu           sync.Mutex
		up, closed   bool
		teardownDone = make(chan struct{})
	)
	// While the cluster is starting, cancelling makes Start remove what it
	// made and return.
	closeMesh := func(why string) bool {
		mu.Lock()
		defer mu.Unlock()
		if !up || closed {
			return false
		}
		closed = true
		if why != "" {
			fmt.Fprintf(os.Stderr, "%s: %s: removing the cluster\n", suite, why)
		}
		if err := mesh.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: close: %v\n", suite, err)
		}
		close(teardownDone)
		return true
	}
	report := func() []string {
		left := mesh.Leftovers()
		for _, l := range left {
			fmt.Fprintf(os.Stderr, "%s: left behind: %s\n", suite, l)
		}
		if len(left) == 0 {
			fmt.Println("cluster: removed; nothing left behind (namespaces, links, mounts, bpffs pins, processes, temp dir)")
		}
		return left
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
			report()
			os.Exit(130)
		}
	}()
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	opts.Keep = opts.Keep || os.Getenv("ZMESH_E2E_KEEP") != ""
	// ZMESH_E2E_FROM_CHART=1 runs a suite on the mesh installed from the
	// chart (Options.FromChart), =0 on host processes.
	switch os.Getenv("ZMESH_E2E_FROM_CHART") {
	case "1":
		opts.FromChart = true
	case "0":
		opts.FromChart = false
	}
	var err error
	mesh, err = Start(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: start the cluster: %v\n", suite, err)
		return 1
	}
	mu.Lock()
	up = true
	mu.Unlock()
	if ctx.Err() != nil {
		closeMesh("interrupted")
		report()
		return 130
	}
	if to := flag.Lookup("test.timeout"); to != nil {
		if d, _ := time.ParseDuration(to.Value.String()); d > time.Minute {
			watchdog := time.AfterFunc(d-time.Since(start)-40*time.Second, func() {
				closeMesh("the test timeout is near")
				report()
				os.Exit(1)
			})
			defer watchdog.Stop()
		}
	}
	use(mesh)
	code := m.Run()
	if !closeMesh("") {
		<-teardownDone // a signal's teardown is under way; it exits
	}
	if len(report()) > 0 && code == 0 {
		code = 1
	}
	fmt.Printf("%s: wall time %s\n", suite, time.Since(start).Round(100*time.Millisecond))
	return code
}
