// Command kube-testenv builds the cached Kubernetes binaries the
// integration and end-to-end tests run (internal/kubetest), or runs one
// control plane for a shell.
//
//	go run ./hack/kube-testenv build   # idempotent; minutes when cold
//	go run ./hack/kube-testenv run     # prints export lines, runs until Ctrl-C
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/zmesh/zmesh/internal/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kube-testenv build|run")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = kubetest.Build(ctx, os.Stderr)
		if err == nil {
			fmt.Fprintf(os.Stderr, "kube-testenv: Kubernetes %s and etcd %s in %s\n", kubetest.KubeVersion, kubetest.EtcdVersion, kubetest.BinDir())
		}
	case "run":
		err = run(ctx)
	default:
		fmt.Fprintf(os.Stderr, "kube-testenv: unknown command %q (build or run)\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-testenv:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	e, err := kubetest.Start(ctx)
	if err != nil {
		return err
	}
	fmt.Print(e.Exports())
	fmt.Fprintf(os.Stderr, "kube-testenv: %s ready (state %s); Ctrl-C stops it\n", e.APIServer, e.StateDir)
	<-ctx.Done()
	return e.Stop()
}
