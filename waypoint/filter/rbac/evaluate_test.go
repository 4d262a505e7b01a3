package rbac

import "testing"

// TestMatchNotName: whether a policy matched does not depend on its name
// (a hand-built set may have an unnamed policy; compiled ones never do).
func TestMatchNotName(t *testing.T) {
	anyM := []Matcher{{Kind: KindAny}}
	for _, c := range []struct {
		action  Action
		allowed bool
	}{{ActionAllow, true}, {ActionDeny, false}, {ActionLog, true}} {
		s := &Set{Rules: &Engine{Action: c.action, Policies: []Policy{{Name: "", Permissions: anyM, Principals: anyM}}}}
		if d := Evaluate(s, &Request{}); d.Allowed != c.allowed {
			t.Errorf("%v: allowed %v, want %v", c.action, d.Allowed, c.allowed)
		}
	}
	if d := Evaluate(nil, &Request{}); !d.Allowed {
		t.Errorf("no filter denies")
	}
	if d := Evaluate(&Set{Rules: &Engine{Action: ActionAllow}}, &Request{}); d.Allowed {
		t.Errorf("an ALLOW filter without policies allows")
	}
}

// TestEvaluateAllocs: evaluation allocates nothing.
func TestEvaluateAllocs(t *testing.T) {
	s := &Set{Rules: &Engine{Action: ActionAllow, Policies: []Policy{{Name: "p",
		Permissions: []Matcher{{Kind: KindNot, Children: []Matcher{{Kind: KindDestinationPort, Port: 1}}}},
		Principals:  []Matcher{{Kind: KindAuthenticated}}}}}}
	req := &Request{Principal: "spiffe://td/ns/a/sa/b", DestinationPort: 2}
	if n := testing.AllocsPerRun(100, func() { Evaluate(s, req) }); n != 0 {
		t.Errorf("%v allocations per evaluation", n)
	}
}
