// Package state is ztunnel's view of the mesh: workloads, services and L4
// policies, typed and indexed (by address, uid, service VIP and hostname,
// identity and node). Readers take an immutable Snapshot; each change builds
// the next one and swaps it in, so a proxy decision never sees half an
// update. Two sources feed it through Apply: the delta xDS client and a local
// YAML file. It imports the wire types and authz, never the proxies or xDS.
package state
