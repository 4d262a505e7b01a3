// Package deploy holds zmesh's manifests: the Istio and Gateway API CRDs
// (crds/, copied from the pinned modules by `make generate-crds`), the RBAC
// of each component (rbac/), and the Helm chart (charts/zmesh, rendered by
// render/ into manifests/zmesh.yaml). Its tests apply them to a real API
// server: the CRDs and RBAC for real, the chart as a server-side dry run.
package deploy
