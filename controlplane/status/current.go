package status

import (
	"cmp"
	"encoding/json"
	"maps"
	"net/http"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/translate"
)

// ObjectStatus is one object's conditions as the last push decided them:
// what zmeshd writes to the object's status in a cluster, and, with no
// API server to hold it, the only place a user can read it.
type ObjectStatus struct {
	Group      string            `json:"group,omitempty"`
	Kind       string            `json:"kind"`
	Namespace  string            `json:"namespace,omitempty"`
	Name       string            `json:"name"`
	Conditions []ObjectCondition `json:"conditions"`
}

// ObjectCondition is one condition of an ObjectStatus; Parent is set on a
// route's conditions for one of its parentRefs.
type ObjectCondition struct {
	Parent  string `json:"parent,omitempty"`
	Type    string `json:"type"`
	Status  bool   `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// l7Groups gives the API group of the kinds the waypoints' status is about
// (l7.ObjectRef names only the kind).
var l7Groups = map[string]string{
	"VirtualService": "networking.istio.io", "DestinationRule": "networking.istio.io",
	"HTTPRoute": "gateway.networking.k8s.io", "GRPCRoute": "gateway.networking.k8s.io",
	"RequestAuthentication": "security.istio.io",
}

// Current returns the conditions of every object the last push judged,
// sorted by group, kind, namespace and name.
func (r *Reporter) Current() []ObjectStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	byRef := map[translate.ObjectRef]*ObjectStatus{}
	get := func(ref translate.ObjectRef) *ObjectStatus {
		if s := byRef[ref]; s != nil {
			return s
		}
		s := &ObjectStatus{Group: ref.Group, Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name}
		byRef[ref] = s
		return s
	}
	for ref, cs := range r.current {
		s := get(ref)
		for _, c := range cs {
			s.Conditions = append(s.Conditions, ObjectCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message})
		}
	}
	for _, st := range r.routeCurrent {
		s := get(routeRef(st.Object))
		if c := st.Condition; c != nil {
			s.Conditions = append(s.Conditions, ObjectCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message})
		}
		for _, p := range st.Parents {
			for _, c := range p.Conditions {
				s.Conditions = append(s.Conditions, ObjectCondition{Parent: string(p.ParentRef.Name), Type: c.Type,
					Status: c.Status == metav1.ConditionTrue, Reason: c.Reason, Message: c.Message})
			}
		}
	}
	out := make([]ObjectStatus, 0, len(byRef))
	for _, ref := range slices.SortedFunc(maps.Keys(byRef), func(a, b translate.ObjectRef) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	}) {
		out = append(out, *byRef[ref])
	}
	return out
}

func routeRef(o l7.ObjectRef) translate.ObjectRef {
	return translate.ObjectRef{Group: l7Groups[o.Kind], Kind: o.Kind, Namespace: o.Namespace, Name: o.Name}
}

// Handler serves Current as JSON (zmeshd's /debug/statusz).
func (r *Reporter) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Current())
	})
}
