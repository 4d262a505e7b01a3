package push

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/xds"
)

// RouteReporter receives, with the snapshot they were built from, the
// problems of every waypoint's build; it turns them into the status of
// the routes, VirtualServices and DestinationRules.
type RouteReporter interface {
	ReportRoutes(ctx context.Context, snap *model.Snapshot, problems []l7.Problem)
}

// BuildViews builds the view of every istio-waypoint Gateway of snap:
// exactly one l7.Build per Gateway, whatever the number of its replicas.
// It returns the views by Gateway and every build's problems.
func BuildViews(opts l7.Options, snap *model.Snapshot) (map[xds.ViewKey]xds.View, []l7.Problem) {
	views := map[xds.ViewKey]xds.View{}
	var problems []l7.Problem
	for _, gw := range snap.Gateways {
		if string(gw.Spec.GatewayClassName) != model.WaypointClass {
			continue
		}
		res := l7.Build(opts, snap, gw)
		views[xds.ViewKey{Namespace: gw.Namespace, Name: gw.Name}] = viewOf(res)
		problems = append(problems, res.Problems...)
	}
	return views, problems
}

func viewOf(res l7.Resources) xds.View {
	v := xds.View{
		xds.TypeListener: map[string]proto.Message{},
		xds.TypeRoute:    map[string]proto.Message{},
		xds.TypeCluster:  map[string]proto.Message{},
		xds.TypeEndpoint: map[string]proto.Message{},
	}
	for _, l := range res.Listeners {
		v[xds.TypeListener][l.GetName()] = l
	}
	for _, r := range res.Routes {
		v[xds.TypeRoute][r.GetName()] = r
	}
	for _, c := range res.Clusters {
		v[xds.TypeCluster][c.GetName()] = c
	}
	for _, e := range res.Endpoints {
		v[xds.TypeEndpoint][e.GetClusterName()] = e
	}
	return v
}

// pushViews builds and hands the waypoint views to the xDS server, when it
// serves them.
func (p *Pipeline) pushViews(ctx context.Context, snap *model.Snapshot) {
	if !p.Waypoints {
		return
	}
	views, problems := BuildViews(l7.Options{Mesh: p.Options.Mesh, RequireRedirectionAnnotation: p.Options.RequireRedirectionAnnotation, JWKS: p.JWKS}, snap)
	changed, removed, err := p.XDS.SetViews(views)
	if err != nil {
		p.Log.Error("push waypoint views", "error", err)
		return
	}
	if changed+removed > 0 {
		p.Log.Info("pushed waypoint views", "waypoints", len(views), "changed", changed, "removed", removed)
	}
	if p.RouteReporter != nil {
		p.RouteReporter.ReportRoutes(ctx, snap, problems)
	}
}
