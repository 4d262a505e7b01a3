// Package filepod names pods that come from files rather than an API
// server (docs/decisions.md, "ZDS"): with no cluster, zmeshd, the node runner and the
// CNI agent must agree on a pod's metadata.uid — the ZDS uid and the bpffs
// directory — without anyone assigning it. Every side imports this one
// helper.
package filepod

import "github.com/google/uuid"

// space is the UUIDv5 namespace of file pods' uids.
var space = uuid.MustParse("0b6b9a3e-6f0e-4b8e-9c55-5a3c1a7e2d10")

// UID is the uid of the pod namespace/name read from a file without one: a
// UUIDv5 of "namespace/name".
func UID(namespace, name string) string {
	return uuid.NewSHA1(space, []byte(namespace+"/"+name)).String()
}
