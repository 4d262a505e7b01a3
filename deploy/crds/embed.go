// Package crds carries the Istio and Gateway API CRDs of the pinned
// modules (the *.yaml beside this file, written by `make generate-crds`)
// into the binaries that install them.
package crds

import "embed"

// Files are the CRD files, at their base names.
//
//go:embed *.yaml
var Files embed.FS
