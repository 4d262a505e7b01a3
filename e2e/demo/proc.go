package main

import (
	"context"
	"errors"

	"github.com/zmesh/zmesh/e2e/proc"
)

// startProc starts one of the mesh's processes and waits until GET ready
// answers 200.
func startProc(ctx context.Context, name, bin, logPath, ready string, args ...string) (*proc.Proc, error) {
	p := &proc.Proc{Name: name, Bin: bin, Args: args, LogPath: logPath, Ready: ready}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

var errNoReply = errors.New("closed without a reply")
