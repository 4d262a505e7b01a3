package route

import (
	"errors"
	"testing"
)

// TestNewTableRefusesBrokenRoutes: Decide relies on what NewTable checks, so
// a table built by hand cannot make it panic (a zero total weight would
// divide by zero).
func TestNewTableRefusesBrokenRoutes(t *testing.T) {
	cases := map[string]*Route{
		"zero weights":     {Action: ActionForward, Forward: &ForwardAction{Weighted: []WeightedCluster{{Name: "a"}}}},
		"wrong total":      {Action: ActionForward, Forward: &ForwardAction{Weighted: []WeightedCluster{{Name: "a", Weight: 1}}, TotalWeight: 2}},
		"no forward":       {Action: ActionForward},
		"no redirect":      {Action: ActionRedirect},
		"no direct":        {Action: ActionDirectResponse},
		"no action":        {},
		"regex without re": {Action: ActionDirectResponse, Direct: &DirectResponse{Status: 200}, Match: RouteMatch{Kind: PathRegex}},
	}
	for name, r := range cases {
		_, err := NewTable("t", Options{}, []*VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*Route{r}}})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Path != "virtual_hosts[0].routes[0]" {
			t.Errorf("%s: error %v; want a FieldError at virtual_hosts[0].routes[0]", name, err)
		}
	}
}
