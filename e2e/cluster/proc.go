package cluster

import (
	"context"

	"github.com/zmesh/zmesh/e2e/proc"
)

// Proc is one of the mesh's processes.
type Proc = proc.Proc

// HTTPGet fetches a URL of one of the mesh's own endpoints (metrics,
// config_dump, syncz) and fails on a non-200 answer.
func HTTPGet(ctx context.Context, url string) (string, error) { return proc.HTTPGet(ctx, url) }

func freeAddr() (string, error) { return proc.FreeAddr() }
