// Package ca wires identity's certificate service to Kubernetes: callers
// are authenticated with the TokenReview API (pod-bound service-account
// tokens for audience istio-ca, which name the caller's node), and node
// agents (ztunnel) may obtain the identities of the pods scheduled on their
// own node, known from a pod informer.
//
// The signing, the gRPC service and the authorization rule itself live in
// identity/; this package only supplies what Kubernetes knows. It never
// imports the data planes.
package ca
