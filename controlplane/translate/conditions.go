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
		out = append(out, cond)
	}
	slices.SortFunc(out, func(a, b Condition) int {
		return cmp.Or(compareRefs(a.Object, b.Object), cmp.Compare(a.Type, b.Type))
	})
	return out
}
