package translate

import (
	"cmp"
	"slices"
	"strings"
)

// Condition types.
const (
	// ZtunnelAccepted says whether ztunnel enforces a policy (or serves a
	// ServiceEntry) exactly as written. Istio uses this type for ambient.
	ZtunnelAccepted = "ZtunnelAccepted"
	// WaypointAccepted is set instead on AuthorizationPolicies with
	// targetRefs: a waypoint, not ztunnel, enforces those.
	WaypointAccepted = "WaypointAccepted"
	// WaypointBound is set on the Namespace, Service, ServiceEntry or Pod
	// that carries istio.io/use-waypoint.
	WaypointBound = "istio.io/WaypointBound"
)

// Condition reasons.
const (
	ReasonAccepted            = "Accepted"
	ReasonBound               = "Bound"
	ReasonUnsupportedValue    = "UnsupportedValue"
	ReasonInvalidValue        = "InvalidValue"
	ReasonConflict            = "Conflict"
	ReasonNoMatchingWorkload  = "NoMatchingWorkload"
	ReasonWaypointNotFound    = "WaypointNotFound"
	ReasonWaypointNotReady    = "WaypointNotReady"
	ReasonWaypointForMismatch = "WaypointForMismatch"
	ReasonWaypointRequired    = "WaypointRequired"
	ReasonTargetNotFound      = "TargetNotFound"
)

type condKey struct {
	obj ObjectRef
	typ string
}

// finding is one thing translation noticed about an object. A failing
// finding makes the condition False; others only add to its message.
type finding struct {
	failing bool
	reason  string
	message string
}

// conditions collects findings and folds them into one Condition per
// object and type.
type conditions struct {
	m     map[condKey][]finding
	order []condKey
	// defaults hold the reason and message of a True condition.
	defaults map[condKey][2]string
}

func (c *conditions) add(obj ObjectRef, typ string, f finding) {
	if c.m == nil {
		c.m = map[condKey][]finding{}
	}
	k := condKey{obj, typ}
	fs, ok := c.m[k]
	if !ok {
		c.order = append(c.order, k)
	}
	if slices.Contains(fs, f) {
		return
	}
	c.m[k] = append(fs, f)
}

// fail records a problem: the condition becomes False with the reason of
// the first problem.
func (c *conditions) fail(obj ObjectRef, typ, reason, message string) {
	c.add(obj, typ, finding{true, reason, message})
}

// note records something worth telling that does not make the condition
// False (e.g. a selector that matches nothing yet).
func (c *conditions) note(obj ObjectRef, typ, reason, message string) {
	c.add(obj, typ, finding{false, reason, message})
}

// ok makes sure a condition exists, True with reason and message unless
// findings say otherwise, so status writers can clear stale problems.
func (c *conditions) ok(obj ObjectRef, typ, reason, message string) {
	k := condKey{obj, typ}
	if c.m == nil {
		c.m = map[condKey][]finding{}
	}
	if _, exists := c.m[k]; !exists {
		c.order = append(c.order, k)
		c.m[k] = nil
	}
	if c.defaults == nil {
		c.defaults = map[condKey][2]string{}
	}
	c.defaults[k] = [2]string{reason, message}
}

func (c *conditions) list() []Condition {
	out := make([]Condition, 0, len(c.order))
	for _, k := range c.order {
		out = append(out, c.fold(k))
	}
	slices.SortFunc(out, compareConditions)
	return out
}

// fold makes the Condition of k from its findings.
func (c *conditions) fold(k condKey) Condition {
	fs := c.m[k]
	cond := Condition{Object: k.obj, Type: k.typ, Status: true}
	var msgs []string
	for _, f := range fs {
		if f.failing && cond.Status {
			cond.Status, cond.Reason = false, f.reason
		}
		msgs = append(msgs, f.message)
	}
	if d, ok := c.defaults[k]; ok && cond.Status {
		cond.Reason = d[0]
		msgs = append([]string{d[1]}, msgs...)
	} else if cond.Reason == "" && len(fs) > 0 {
		cond.Reason = fs[0].reason
	}
	cond.Message = strings.Join(msgs, "; ")
	return cond
}

func compareConditions(a, b Condition) int {
	return cmp.Or(compareRefs(a.Object, b.Object), cmp.Compare(a.Type, b.Type))
}

// merge adds what other found, as if it had been recorded into c.
func (c *conditions) merge(other *conditions) {
	for _, k := range other.order {
		c.mergeKey(other, k)
	}
}

// mergeKey adds what other found about k, as if it had been recorded
// into c.
func (c *conditions) mergeKey(other *conditions, k condKey) {
	for _, f := range other.m[k] {
		c.add(k.obj, k.typ, f)
	}
	if d, ok := other.defaults[k]; ok {
		c.ok(k.obj, k.typ, d[0], d[1])
	}
}

// listOver lists the conditions of base (listed as baseList, index giving
// each key's position there) with c's findings recorded on top, as if
// into a copy of base: it folds only the keys c touched.
func (c *conditions) listOver(base *conditions, baseList []Condition, index map[condKey]int) []Condition {
	out := slices.Clone(baseList)
	var extra []Condition
	for _, k := range c.order {
		var one conditions
		one.mergeKey(base, k)
		one.mergeKey(c, k)
		if i, ok := index[k]; ok {
			out[i] = one.fold(k)
		} else {
			extra = append(extra, one.fold(k))
		}
	}
	if len(extra) == 0 {
		return out
	}
	slices.SortFunc(extra, compareConditions)
	merged := make([]Condition, 0, len(out)+len(extra))
	for len(out) > 0 && len(extra) > 0 {
		if compareConditions(extra[0], out[0]) < 0 {
			merged, extra = append(merged, extra[0]), extra[1:]
		} else {
			merged, out = append(merged, out[0]), out[1:]
		}
	}
	return append(append(merged, out...), extra...)
}
