package push

import (
	"context"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

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
// exactly one l7.Build per Gateway and locality of its pods, whatever the
// number of its replicas. A Gateway's view without locality serves the
// replicas whose locality is not known; each locality of its running pods
// (their nodes' topology labels) gets a view whose load assignments are
// relative to it, and located maps those pods' addresses to it. It returns
// the views, the located pods and the problems (of the builds without
// locality: the others only differ in priorities and weights).
func BuildViews(opts l7.Options, snap *model.Snapshot) (map[xds.ViewKey]xds.View, map[netip.Addr]xds.ViewKey, []l7.Problem) {
	views := map[xds.ViewKey]xds.View{}
	located := map[netip.Addr]xds.ViewKey{}
	var problems []l7.Problem
	for _, gw := range snap.Gateways {
		if string(gw.Spec.GatewayClassName) != model.WaypointClass {
			continue
		}
		opts.Locality = nil
		res := l7.Build(opts, snap, gw)
		key := xds.ViewKey{Namespace: gw.Namespace, Name: gw.Name}
		views[key] = viewOf(res)
		problems = append(problems, res.Problems...)
		for name, g := range waypointLocalities(snap, gw) {
			lk := key
			lk.Locality = name
			if _, done := views[lk]; !done {
				opts.Locality = g.locality
				lres := l7.Build(opts, snap, gw)
				// Only clusters and assignments depend on the locality;
				// the same listener and routes are not encoded again.
				lres.Listeners, lres.Routes = res.Listeners, res.Routes
				views[lk] = viewOf(lres)
			}
			for _, a := range g.addrs {
				located[a] = lk
			}
		}
	}
	return views, located, problems
}

// podGroup is the pods of one locality.
type podGroup struct {
	locality *corev3.Locality
	addrs    []netip.Addr
}

// waypointLocalities groups the addresses of gw's running pods by their
// locality ("region/zone/subzone"). A pod is gw's when it carries the
// Gateway's name label in its namespace and runs as the Gateway's service
// account: the identity a replica authenticates with is what selects the
// Gateway's view, so a pod of another identity is never placed in it.
func waypointLocalities(snap *model.Snapshot, gw *gatewayv1.Gateway) map[string]*podGroup {
	out := map[string]*podGroup{}
	for _, p := range snap.Pods {
		if p.Namespace != gw.Namespace || p.Labels[model.LabelGatewayName] != gw.Name || p.Spec.ServiceAccountName != gw.Name ||
			p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		loc := l7.PodLocality(p, snap.Node(p.Spec.NodeName))
		if loc == nil {
			continue
		}
		name := l7.LocalityString(loc)
		g := out[name]
		if g == nil {
			g = &podGroup{locality: loc}
			out[name] = g
		}
		for _, ip := range append([]corev1.PodIP{{IP: p.Status.PodIP}}, p.Status.PodIPs...) {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				g.addrs = append(g.addrs, a.Unmap())
			}
		}
	}
	return out
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
	views, located, problems := BuildViews(l7.Options{Mesh: p.Options.Mesh, RequireRedirectionAnnotation: p.Options.RequireRedirectionAnnotation, JWKS: p.JWKS}, snap)
	changed, removed, err := p.XDS.SetLocatedViews(views, located)
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
