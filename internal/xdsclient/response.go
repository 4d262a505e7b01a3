package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// This file holds the pure half of handling a response: what to hand the
// handler, what to remember, and what to answer. stream.go does the I/O.

var (
	errNoBody       = errors.New("resource has no body")
	errNoName       = errors.New("resource has no name")
	errUnsubscribed = errors.New("type is not subscribed")
)

// changes splits a response into what the handler may see and what is
// rejected before it: resources with no name, no body (TTL heartbeats,
// which we do not ask for) or a payload of another type than the response's.
func changes(resp *discoveryv3.DeltaDiscoveryResponse) (updated []Resource, removed []string, rejected map[string]error) {
	rejected = map[string]error{}
	for _, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			name = r.GetResourceName().GetName()
		}
		switch {
		case name == "":
			rejected[name] = errNoName
		case r.GetResource() == nil:
			rejected[name] = errNoBody
		case r.GetResource().GetTypeUrl() != resp.GetTypeUrl():
			rejected[name] = fmt.Errorf("payload is %s, want %s", r.GetResource().GetTypeUrl(), resp.GetTypeUrl())
		default:
			updated = append(updated, Resource{Name: name, Version: r.GetVersion(), Body: r.GetResource()})
		}
	}
	removed = slices.Clone(resp.GetRemovedResources())
	for _, rn := range resp.GetRemovedResourceNames() {
		removed = append(removed, rn.GetName())
	}
	return updated, removed, rejected
}

// record brings held (name -> version of what the handler holds) up to date:
// accepted updates take their new version, accepted removals are forgotten,
// and a rejected name keeps whatever version it had, since the handler keeps
// its last good copy.
func record(held map[string]string, updated []Resource, removed []string, rejected map[string]error) {
	for _, r := range updated {
		if rejected[r.Name] == nil {
			held[r.Name] = r.Version
		}
	}
	for _, name := range removed {
		if rejected[name] == nil {
			delete(held, name)
		}
	}
}

// reply is the ACK of a response, or its NACK when anything was rejected.
func reply(typeURL, nonce string, rejected map[string]error) *discoveryv3.DeltaDiscoveryRequest {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: nonce}
	if len(rejected) > 0 {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nackMessage(rejected)}
	}
	return req
}

// nackMessage lists each rejected resource as "name: error", sorted by name
// so that the same rejection always reads the same.
func nackMessage(rejected map[string]error) string {
	var b strings.Builder
	for i, name := range slices.Sorted(maps.Keys(rejected)) {
		if i > 0 {
			b.WriteString("; ")
		}
		shown := name
		if shown == "" {
			shown = `""`
		}
		fmt.Fprintf(&b, "%s: %v", shown, rejected[name])
	}
	return b.String()
}

// rejectedNames is for logs.
func rejectedNames(rejected map[string]error) []string {
	return slices.Sorted(maps.Keys(rejected))
}
