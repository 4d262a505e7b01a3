// Package httpserve runs an HTTP server on a listener for as long as a
// context lasts and stops it gracefully: the admin, metrics and readiness
// endpoints of ztunnel and the waypoint are served with it.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// shutdownGrace is how long Serve lets requests in flight finish once its
// context ends; then it closes their connections.
const shutdownGrace = 5 * time.Second

// Serve serves h on ln until ctx ends, then shuts down gracefully and
// returns nil; it returns the error if serving fails before that. Either
// way it has closed ln and its goroutines have exited when it returns.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	select {
	case err := <-done:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	// Serve returns as soon as Shutdown starts; waiting for it anyway
	// means its goroutine is gone before we are.
	<-done
	if err != nil {
		return fmt.Errorf("shut down %s: %w", ln.Addr(), err)
	}
	return nil
}

// Endpoint is one server a command runs: the flag that set its address,
// the address and what it serves.
type Endpoint struct {
	Flag, Addr string
	Handler    http.Handler
}

// Start listens on each endpoint's address in turn and serves it with
// Serve in wg until ctx ends; a server that fails later is logged. An
// address it cannot listen on is returned as an error naming the flag, and
// the endpoints started before it keep running until ctx ends.
func Start(ctx context.Context, wg *sync.WaitGroup, log *slog.Logger, eps ...Endpoint) error {
	for _, ep := range eps {
		ln, err := net.Listen("tcp", ep.Addr)
		if err != nil {
			return fmt.Errorf("%s: %w", ep.Flag, err)
		}
		wg.Go(func() {
			if err := Serve(ctx, ln, ep.Handler); err != nil {
				log.Error("server failed", "listener", ep.Flag, "reason", err.Error())
			}
		})
	}
	return nil
}
