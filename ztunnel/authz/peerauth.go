package authz

import "strings"

// PeerAuthenticationPolicyPrefix begins the name of the DENY policy a
// control plane makes of a STRICT PeerAuthentication; the rest of the name
// is the PeerAuthentication's, in the same namespace. zmeshd names every
// policy that enforces a PeerAuthentication this way (as istiod does for
// those with port-level modes), so a refusal can name what the user wrote.
const PeerAuthenticationPolicyPrefix = "istio_converted_peer_authentication_"

// PeerAuthentication returns "namespace/name" of the PeerAuthentication
// the policy named key ("namespace/name") enforces, and false when key is
// not such a policy.
func PeerAuthentication(key string) (string, bool) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return "", false
	}
	pa, ok := strings.CutPrefix(name, PeerAuthenticationPolicyPrefix)
	if !ok || ns == "" || pa == "" {
		return "", false
	}
	return ns + "/" + pa, true
}
