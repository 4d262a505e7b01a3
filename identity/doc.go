// Package identity is zmesh's workload identity: SPIFFE IDs, X.509 SVIDs,
// the certificate authority that signs them, the Istio-compatible certificate
// service, and the client-side manager that fetches and rotates certificates.
//
// It imports nothing of zmesh's own; every other part may import it.
package identity
