// Package charts carries zmesh's Helm chart (zmesh/) inside the binaries
// that install it, so zmeshctl renders the chart it was built with; its
// crds/ (a link to deploy/crds, which go:embed does not follow) comes from
// package crds.
package charts

import "embed"

// Zmesh is the chart's tree under "zmesh/", without crds/.
//
//go:embed zmesh/Chart.yaml zmesh/values.yaml zmesh/values.schema.json zmesh/.helmignore zmesh/README.md all:zmesh/templates
var Zmesh embed.FS
