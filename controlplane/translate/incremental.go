package translate

import (
	"cmp"
	"maps"

	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/controlplane/model"
)

// Incremental translates a stream of snapshots, each to exactly what
// Translate gives, reusing the previous run's work where it can: while the
// options and every non-pod object (namespaces, services, service entries,
// policies, gateway classes, gateways) are the very same pointers as last
// time, the non-pod translation is kept and a pod whose pointer is
// unchanged keeps its result, Workload pointer included, so that xds.Server
// need not encode it again. A change to any non-pod object translates the
// whole snapshot. Sources that keep an unchanged object's pointer (the
// Kubernetes informers) thus pay for a pod change what it touched; sources
// that decode fresh objects (files) get a full translation each time.
//
// Reuse relies on the snapshot contract: a published object is never
// modified. The messages of an Output must not be modified either, since
// later Outputs share them. An Incremental is not safe for concurrent use;
// its zero value is ready.
type Incremental struct {
	opts Options
	prev *model.Snapshot
	// t holds the non-pod translation of prev (its findings in t.conds)
	// and base its output: services, service entries, policies, and the
	// conditions of t.conds, whose positions baseIndex gives. Pods only
	// read t, never record into it.
	t         *translator
	base      *Output
	baseIndex map[condKey]int
	// pods[i] is the result of prev.Pods[i].
	pods []*podResult
	// full counts the translations that could not reuse the non-pod one.
	full int
}

// Translate returns what Translate(opts, s) returns.
func (inc *Incremental) Translate(opts Options, s *model.Snapshot) *Output {
	if inc.t == nil || opts != inc.opts || !sameNonPods(inc.prev, s) {
		inc.full++
		inc.opts = opts
		inc.t = newTranslator(opts, s)
		inc.base = inc.t.nonPods()
		inc.base.Conditions = inc.t.conds.list()
		inc.baseIndex = make(map[condKey]int, len(inc.base.Conditions))
		for i, c := range inc.base.Conditions {
			inc.baseIndex[condKey{c.Object, c.Type}] = i
		}
		inc.prev, inc.pods = nil, nil
	}
	var old []*corev1.Pod
	if inc.prev != nil {
		old = inc.prev.Pods
	}
	inc.prev = s
	inc.t.snap = s

	out := &Output{
		Addresses:      make(map[string]*workload.Address, len(inc.base.Addresses)+len(s.Pods)),
		Authorizations: maps.Clone(inc.base.Authorizations),
	}
	maps.Copy(out.Addresses, inc.base.Addresses)
	// The pods' findings, and those about policies they lead to, are
	// recorded apart and then laid over the non-pod ones.
	var conds conditions
	ph := inc.t.newPodPhase(out, &conds)
	pods := make([]*podResult, len(s.Pods))
	j := 0 // the walk through old, which is sorted like s.Pods
	for i, p := range s.Pods {
		for j < len(old) && old[j] != p && (old[j] == nil || p != nil && podBefore(old[j], p)) {
			j++
		}
		if j < len(old) && p != nil && old[j] == p {
			pods[i] = inc.pods[j]
			j++
		} else {
			pods[i] = inc.t.pod(p)
		}
		ph.add(pods[i])
	}
	inc.pods = pods
	ph.finish()
	out.Conditions = conds.listOver(&inc.t.conds, inc.base.Conditions, inc.baseIndex)
	return out
}

// sameNonPods reports whether a and b hold the very same objects of every
// kind but pods, so that a translation of a holds for b's pods.
func sameNonPods(a, b *model.Snapshot) bool {
	return a != nil && b != nil &&
		samePointers(a.Namespaces, b.Namespaces) &&
		samePointers(a.Services, b.Services) &&
		samePointers(a.ServiceEntries, b.ServiceEntries) &&
		samePointers(a.PeerAuthentications, b.PeerAuthentications) &&
		samePointers(a.AuthorizationPolicies, b.AuthorizationPolicies) &&
		samePointers(a.GatewayClasses, b.GatewayClasses) &&
		samePointers(a.Gateways, b.Gateways)
}

// podBefore: a sorts before b by namespace/name. Reuse needs the very
// pointer, so a snapshot out of order only costs reuse, never correctness.
func podBefore(a, b *corev1.Pod) bool {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name)) < 0
}

func samePointers[T any](a, b []*T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
