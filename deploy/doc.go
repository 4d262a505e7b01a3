// Package deploy holds zmesh's manifests: the Istio and Gateway API CRDs
// (crds/, copied from the pinned modules by `make generate-crds`) and the
// RBAC of each component (rbac/). Its tests apply them to a real API server.
package deploy
