package status

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
)

// ReportRoutes implements push.RouteReporter: it logs the waypoints' build
// problems that changed and writes RouteStatuses to the objects whose
// status changed (Kubernetes only, on the leader).
func (r *Reporter) ReportRoutes(ctx context.Context, snap *model.Snapshot, problems []l7.Problem) {
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	statuses := RouteStatuses(r.Mesh, snap, problems)
	r.mu.Lock()
	defer r.mu.Unlock()
	// Report, which comes after in the same push, folds these into the
	// policies' conditions.
	r.policyProblems = policyProblems(problems)
	r.policyWaypoints = policyWaypoints(problems)
	r.routeCurrent = statuses
	if r.routeLogged == nil {
		r.routeLogged, r.routeWritten = map[string]bool{}, map[l7.ObjectRef]string{}
	}
	// Log what changed: the status of the L7 objects (the only report
	// with files), and problems of objects that have no status of ours
	// (Services, Gateways).
	logged := map[string]bool{}
	for _, p := range problems {
		switch p.Object.Kind {
		case "VirtualService", "DestinationRule", "HTTPRoute", "GRPCRoute", "RequestAuthentication":
			continue
		}
		key := "problem " + p.String()
		logged[key] = true
		if !r.routeLogged[key] {
			log.Warn("waypoint config problem", "object", p.Object.String(), "field", p.Field, "reason", p.Message)
		}
	}
	for _, st := range statuses {
		b, _ := json.Marshal(st)
		key := string(b)
		logged[key] = true
		if !r.routeLogged[key] {
			logRouteStatus(log, st)
		}
	}
	r.routeLogged = logged

	leading := (r.Istio != nil || r.Gateway != nil) && (r.Leader == nil || r.Leader())
	if leading && !r.routeLeading {
		clear(r.routeWritten)
	}
	r.routeLeading = leading
	if !leading {
		return
	}
	seen := map[l7.ObjectRef]bool{}
	for _, st := range statuses {
		seen[st.Object] = true
		b, _ := json.Marshal(st)
		key := string(b)
		if r.routeWritten[st.Object] == key {
			continue
		}
		if err := r.writeRoute(ctx, st); err != nil {
			log.Warn("could not write status", "object", st.Object.String(), "error", err)
			continue
		}
		r.routeWritten[st.Object] = key
	}
	maps.DeleteFunc(r.routeWritten, func(ref l7.ObjectRef, _ string) bool { return !seen[ref] })
}

func logRouteStatus(log *slog.Logger, st RouteStatus) {
	if c := st.Condition; c != nil {
		if c.Status {
			log.Info("config accepted", "object", st.Object.String(), "condition", c.Type, "message", c.Message)
		} else {
			log.Warn("config problem", "object", st.Object.String(), "condition", c.Type, "reason", c.Reason, "message", c.Message)
		}
	}
	for _, p := range st.Parents {
		for _, c := range p.Conditions {
			if c.Status == metav1.ConditionTrue {
				continue
			}
			log.Warn("config problem", "object", st.Object.String(), "parent", string(p.ParentRef.Name), "condition", c.Type, "reason", c.Reason, "message", c.Message)
		}
	}
}

func (r *Reporter) writeRoute(ctx context.Context, st RouteStatus) error {
	now := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
	ns, name := st.Object.Namespace, st.Object.Name
	switch st.Object.Kind {
	case "VirtualService", "DestinationRule", "RequestAuthentication":
		if r.Istio == nil {
			return nil
		}
		c := st.Condition
		status := "False"
		if c.Status {
			status = "True"
		}
		// The transition time moves only when the status does.
		since := now.Time
		if prev, ok := r.routeSince[st.Object]; ok && prev.status == status {
			since = prev.at
		}
		patch, err := json.Marshal(map[string]any{"status": map[string]any{
			"observedGeneration": fmt.Sprint(st.Generation),
			"conditions": []map[string]any{{
				"type": c.Type, "status": status, "reason": c.Reason, "message": c.Message,
				"lastTransitionTime": since.Format(time.RFC3339), "observedGeneration": st.Generation,
			}},
		}})
		if err != nil {
			return err
		}
		opts := metav1.PatchOptions{FieldManager: "zmeshd"}
		switch st.Object.Kind {
		case "VirtualService":
			_, err = r.Istio.NetworkingV1().VirtualServices(ns).Patch(ctx, name, types.MergePatchType, patch, opts, "status")
		case "DestinationRule":
			_, err = r.Istio.NetworkingV1().DestinationRules(ns).Patch(ctx, name, types.MergePatchType, patch, opts, "status")
		default:
			_, err = r.Istio.SecurityV1().RequestAuthentications(ns).Patch(ctx, name, types.MergePatchType, patch, opts, "status")
		}
		if err == nil {
			if r.routeSince == nil {
				r.routeSince = map[l7.ObjectRef]transition{}
			}
			r.routeSince[st.Object] = transition{status, since}
		}
		return err
	case "HTTPRoute", "GRPCRoute":
		if r.Gateway == nil {
			return nil
		}
		// Other controllers' parents stay as they are: read, replace ours,
		// write back, again on a conflict.
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if st.Object.Kind == "HTTPRoute" {
				obj, err := r.Gateway.GatewayV1().HTTPRoutes(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if !oursIn(obj.Status.Parents) && len(st.Parents) == 0 {
					return nil // nothing of ours to write or to remove
				}
				obj.Status.Parents = mergeParents(obj.Status.Parents, st.Parents, now)
				_, err = r.Gateway.GatewayV1().HTTPRoutes(ns).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: "zmeshd"})
				return err
			}
			obj, err := r.Gateway.GatewayV1().GRPCRoutes(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !oursIn(obj.Status.Parents) && len(st.Parents) == 0 {
				return nil
			}
			obj.Status.Parents = mergeParents(obj.Status.Parents, st.Parents, now)
			_, err = r.Gateway.GatewayV1().GRPCRoutes(ns).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: "zmeshd"})
			return err
		})
	}
	return nil
}

func oursIn(ps []gatewayv1.RouteParentStatus) bool {
	return slices.ContainsFunc(ps, func(p gatewayv1.RouteParentStatus) bool { return p.ControllerName == ControllerName })
}

type transition struct {
	status string
	at     time.Time
}

// mergeParents replaces zmeshd's parents in old with ours, keeping each
// condition's transition time where its status did not change.
func mergeParents(old, ours []gatewayv1.RouteParentStatus, now metav1.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	prev := map[string]gatewayv1.RouteParentStatus{}
	for _, p := range old {
		if p.ControllerName != ControllerName {
			out = append(out, p)
			continue
		}
		b, _ := json.Marshal(p.ParentRef)
		prev[string(b)] = p
	}
	for _, p := range ours {
		p = *p.DeepCopy()
		b, _ := json.Marshal(p.ParentRef)
		before := prev[string(b)]
		for i := range p.Conditions {
			c := &p.Conditions[i]
			c.LastTransitionTime = now
			if j := slices.IndexFunc(before.Conditions, func(o metav1.Condition) bool { return o.Type == c.Type }); j >= 0 && before.Conditions[j].Status == c.Status {
				c.LastTransitionTime = before.Conditions[j].LastTransitionTime
			}
		}
		out = append(out, p)
	}
	return out
}
