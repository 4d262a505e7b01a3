// Package status reports translation's findings to users: as status
// conditions on the Istio objects they are about and as route parent
// status on Gateway API routes (Kubernetes), and as log lines (every
// mode). The waypoints' findings (RouteStatuses) say of each
// VirtualService, DestinationRule, HTTPRoute and GRPCRoute whether a
// waypoint applies it, ignores part of it and why, or serves none of its
// hosts. Each object's conditions are written only when they
// change, so a push that changes nothing costs no API call.
package status

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"sync"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/translate"
)

// Reporter implements push.Reporter.
type Reporter struct {
	Log *slog.Logger
	// Istio writes conditions to the objects' status; nil only logs.
	Istio istioclient.Interface
	// Gateway writes route parent status; nil only logs.
	Gateway gatewayclient.Interface
	// Mesh resolves the hosts of VirtualServices and DestinationRules.
	Mesh model.Mesh
	// Leader says whether this replica may write (leader election); nil
	// means always.
	Leader func() bool

	mu      sync.Mutex
	logged  map[translate.ObjectRef]string
	written map[translate.ObjectRef]string
	leading bool

	// The same for ReportRoutes.
	routeLogged  map[string]bool
	routeWritten map[l7.ObjectRef]string
	routeSince   map[l7.ObjectRef]transition
	routeLeading bool
	// policyProblems are the waypoints' problems with AuthorizationPolicies
	// from the last ReportRoutes, which Report folds into their
	// WaypointAccepted conditions.
	policyProblems map[l7.ObjectRef][]l7.Problem
	// policyWaypoints are the waypoints each AuthorizationPolicy is in
	// force on, from the same report.
	policyWaypoints map[l7.ObjectRef][]string

	// current and routeCurrent are the last push's conditions, for
	// Current.
	current      map[translate.ObjectRef][]translate.Condition
	routeCurrent []RouteStatus
}

// condition is the JSON of an Istio status condition.
type condition struct {
	Type               string    `json:"type"`
	Status             string    `json:"status"`
	Reason             string    `json:"reason,omitempty"`
	Message            string    `json:"message,omitempty"`
	LastTransitionTime time.Time `json:"lastTransitionTime"`
}

// Report logs conditions that changed and writes them to the objects.
func (r *Reporter) Report(ctx context.Context, conds []translate.Condition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.logged == nil {
		r.logged, r.written = map[translate.ObjectRef]string{}, map[translate.ObjectRef]string{}
	}
	conds = withWaypointProblems(withWorkloadPolicies(conds, r.policyWaypoints), r.policyProblems)
	byObject := map[translate.ObjectRef][]translate.Condition{}
	for _, c := range conds {
		byObject[c.Object] = append(byObject[c.Object], c)
	}
	r.current = byObject
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	logged := map[translate.ObjectRef]string{}
	for ref, cs := range byObject {
		key := fingerprint(cs)
		logged[ref] = key
		if r.logged[ref] == key {
			continue
		}
		for _, c := range cs {
			if c.Status {
				log.Info("config accepted", "object", ref.String(), "condition", c.Type)
			} else {
				log.Warn("config problem", "object", ref.String(), "condition", c.Type, "reason", c.Reason, "message", c.Message)
			}
		}
	}
	r.logged = logged

	leading := r.Istio != nil && (r.Leader == nil || r.Leader())
	if leading && !r.leading {
		clear(r.written) // a new leader rewrites everything once
	}
	r.leading = leading
	if !leading {
		return
	}
	for ref, cs := range byObject {
		key := fingerprint(cs)
		if r.written[ref] == key {
			continue
		}
		if err := r.write(ctx, ref, cs); err != nil {
			log.Warn("could not write status", "object", ref.String(), "error", err)
			continue
		}
		r.written[ref] = key
	}
	maps.DeleteFunc(r.written, func(ref translate.ObjectRef, _ string) bool { _, ok := byObject[ref]; return !ok })
}

func (r *Reporter) write(ctx context.Context, ref translate.ObjectRef, cs []translate.Condition) error {
	now := time.Now().UTC().Truncate(time.Second)
	var out []condition
	for _, c := range cs {
		st := "False"
		if c.Status {
			st = "True"
		}
		out = append(out, condition{Type: c.Type, Status: st, Reason: c.Reason, Message: c.Message, LastTransitionTime: now})
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": out}})
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "zmeshd"}
	switch ref.Group + "/" + ref.Kind {
	case "security.istio.io/AuthorizationPolicy":
		_, err = r.Istio.SecurityV1().AuthorizationPolicies(ref.Namespace).Patch(ctx, ref.Name, types.MergePatchType, patch, opts, "status")
	case "security.istio.io/PeerAuthentication":
		_, err = r.Istio.SecurityV1().PeerAuthentications(ref.Namespace).Patch(ctx, ref.Name, types.MergePatchType, patch, opts, "status")
	case "networking.istio.io/ServiceEntry":
		_, err = r.Istio.NetworkingV1().ServiceEntries(ref.Namespace).Patch(ctx, ref.Name, types.MergePatchType, patch, opts, "status")
	default:
		// Core kinds (Namespace, Service, Pod) have no place for our
		// conditions; the log line is their report.
	}
	return err
}

func fingerprint(cs []translate.Condition) string {
	b, _ := json.Marshal(cs)
	return string(b)
}
