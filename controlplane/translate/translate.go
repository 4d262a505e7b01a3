package translate

import (
	"cmp"
	"slices"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/api/workload"
	"github.com/zmesh/zmesh/api/workload/security"
	"github.com/zmesh/zmesh/controlplane/model"
)

// Options configure a translation.
type Options struct {
	Mesh model.Mesh
	// RequireRedirectionAnnotation: in a cluster a pod is HBONE only while it
	// carries ambient.istio.io/redirection: enabled, which the CNI agent sets
	// once ztunnel has taken the pod (docs/decisions.md, "Enrolment and
	// switch-over"). With files (no cluster) the labels alone decide.
	RequireRedirectionAnnotation bool
}

// Output is everything ztunnel gets, and the status of the objects read.
type Output struct {
	// Addresses by xDS resource name: a workload's uid, or
	// "namespace/hostname" for a service.
	Addresses map[string]*workload.Address
	// Authorizations by "namespace/name".
	Authorizations map[string]*security.Authorization
	// Conditions, at most one per object and type, sorted by object then
	// type.
	Conditions []Condition
}

// ObjectRef names a Kubernetes object; Group is "" for core kinds.
type ObjectRef struct{ Group, Kind, Namespace, Name string }

func (r ObjectRef) String() string {
	kind := r.Kind
	if r.Group != "" {
		kind += "." + r.Group
	}
	if r.Namespace == "" {
		return kind + " " + r.Name
	}
	return kind + " " + r.Namespace + "/" + r.Name
}

func compareRefs(a, b ObjectRef) int {
	return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Kind, b.Kind),
		cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Condition is one status condition translation found for an object, in
// the shape of metav1.Condition (a status writer adds generation and time).
type Condition struct {
	Object ObjectRef
	Type   string
	Status bool
	Reason string
	// Message names the field it is about, e.g.
	// "spec.rules[0].to[0].operation.methods: ...". Several findings of one
	// type are joined with "; ".
	Message string
}

// Translate turns a snapshot into ztunnel's resources. It is pure: the same
// snapshot and options always give the same output, and it never modifies
// the snapshot.
func Translate(opts Options, s *model.Snapshot) *Output {
	t := newTranslator(opts, s)
	out := t.nonPods()
	ph := t.newPodPhase(out, &t.conds)
	for _, p := range s.Pods {
		ph.add(t.pod(p))
	}
	ph.finish()
	out.Conditions = t.conds.list()
	return out
}

// nonPods translates everything but pods: namespaces' waypoints, policies,
// services and service entries. Order matters: policies first (workloads
// list them), services before the policies whose targetRefs name them,
// waypoints for both. The pods then only read what it indexed.
func (t *translator) nonPods() *Output {
	s := t.snap
	out := &Output{
		Addresses:      make(map[string]*workload.Address, len(s.Pods)+len(s.Services)),
		Authorizations: map[string]*security.Authorization{},
	}
	t.namespaceWaypoints()
	t.peerAuthentications()
	t.authorizationPolicies(out)
	for _, svc := range s.Services {
		if key, a := t.service(svc); a != nil {
			out.Addresses[key] = &workload.Address{Type: &workload.Address_Service{Service: a}}
		}
	}
	for _, se := range s.ServiceEntries {
		t.serviceEntry(se, out)
	}
	t.targetRefPolicies()
	return out
}

// podPhase adds pods' results to an output, in snapshot order, and counts
// what the policies' status and the policies sent depend on.
type podPhase struct {
	t     *translator
	out   *Output
	conds *conditions
	// apSelected counts the pods of each selector AuthorizationPolicy, by
	// apEntry.index, apCaptured those of them ztunnel captures, and
	// apWaypoints lists the waypoints of those that are waypoints' pods;
	// paSelected counts those each selector PeerAuthentication applies
	// to, lostTo, per PeerAuthentication, the pods an older one took.
	apSelected  []int
	apCaptured  []int
	apWaypoints [][]string
	paSelected  map[*securityv1.PeerAuthentication]int
	lostTo      map[*securityv1.PeerAuthentication]map[*securityv1.PeerAuthentication]int
	// strictFrom holds the PeerAuthentications that make some workload
	// STRICT on all ports.
	strictFrom map[*securityv1.PeerAuthentication]bool
}

func (t *translator) newPodPhase(out *Output, conds *conditions) *podPhase {
	return &podPhase{
		t: t, out: out, conds: conds,
		apSelected:  make([]int, len(t.ap.entries)),
		apCaptured:  make([]int, len(t.ap.entries)),
		apWaypoints: make([][]string, len(t.ap.entries)),
		paSelected:  map[*securityv1.PeerAuthentication]int{},
		lostTo:      map[*securityv1.PeerAuthentication]map[*securityv1.PeerAuthentication]int{},
		strictFrom:  map[*securityv1.PeerAuthentication]bool{},
	}
}

// add applies one pod's result; pods must come in snapshot order, as a
// later pod of the same name overrides an earlier one.
func (ph *podPhase) add(r *podResult) {
	if w := r.addr.GetWorkload(); w != nil {
		ph.out.Addresses[w.Uid] = r.addr
	}
	ph.conds.merge(&r.conds)
	for _, e := range r.policies {
		ph.apSelected[e.index]++
		if r.captured {
			ph.apCaptured[e.index]++
		}
		if r.waypoint != "" && !slices.Contains(ph.apWaypoints[e.index], r.waypoint) {
			ph.apWaypoints[e.index] = append(ph.apWaypoints[e.index], r.waypoint)
		}
	}
	if r.paWinner != nil {
		ph.paSelected[r.paWinner]++
		for _, o := range r.paLosers {
			if ph.lostTo[o] == nil {
				ph.lostTo[o] = map[*securityv1.PeerAuthentication]int{}
			}
			ph.lostTo[o][r.paWinner]++
		}
	}
	if r.strictFrom != nil {
		ph.strictFrom[r.strictFrom] = true
	}
}

// finish emits the policies the pods ended up listing and reports on
// the policies' selectors.
func (ph *podPhase) finish() {
	ph.finishPeerAuthentications()
	ph.finishAuthorizationPolicies()
}

// translator holds the indexes of one snapshot and what translation has
// learnt so far.
type translator struct {
	opts  Options
	mesh  model.Mesh
	snap  *model.Snapshot
	conds conditions

	namespaces map[string]*corev1.Namespace
	// services holds each namespace's Services with a selector, for
	// endpoint selection; serviceByName every Service.
	services      map[string]*selectorIndex[selectedService]
	serviceByName map[nsName]*corev1.Service
	// serviceEntries selecting pods, by namespace.
	seSelectors map[string]*selectorIndex[*seSelection]
	// waypoints: Gateways of class istio-waypoint.
	waypoints map[nsName]*gatewayv1.Gateway
	// nsWaypoint caches each namespace's own use-waypoint binding.
	nsWaypoint map[string]waypointBinding
	// serviceWaypoint records which Services and ServiceEntries are bound to
	// a waypoint, for targetRef policies.
	serviceWaypoint map[ObjectRef]bool
	// serviceKeys are the "namespace/hostname" keys already taken.
	serviceKeys map[string]ObjectRef

	pa peerAuthState
	ap authzPolicyState
}

// selectedService is a Service with a selector and its resource name.
type selectedService struct {
	svc *corev1.Service
	key string
}

// hostname is a Service's fully qualified name.
func (t *translator) hostname(svc *corev1.Service) string {
	return svc.Name + "." + svc.Namespace + ".svc." + t.mesh.DomainSuffix
}

type nsName struct{ namespace, name string }

func newTranslator(opts Options, s *model.Snapshot) *translator {
	mesh := opts.Mesh
	if mesh.TrustDomain == "" {
		mesh.TrustDomain = model.DefaultMesh().TrustDomain
	}
	if mesh.DomainSuffix == "" {
		mesh.DomainSuffix = model.DefaultMesh().DomainSuffix
	}
	if mesh.ClusterID == "" {
		mesh.ClusterID = model.DefaultMesh().ClusterID
	}
	if mesh.RootNamespace == "" {
		mesh.RootNamespace = model.DefaultMesh().RootNamespace
	}
	t := &translator{
		opts: opts, mesh: mesh, snap: s,
		namespaces:      make(map[string]*corev1.Namespace, len(s.Namespaces)),
		services:        map[string]*selectorIndex[selectedService]{},
		serviceByName:   make(map[nsName]*corev1.Service, len(s.Services)),
		seSelectors:     map[string]*selectorIndex[*seSelection]{},
		waypoints:       map[nsName]*gatewayv1.Gateway{},
		nsWaypoint:      map[string]waypointBinding{},
		serviceWaypoint: map[ObjectRef]bool{},
		serviceKeys:     make(map[string]ObjectRef, len(s.Services)),
	}
	for _, ns := range s.Namespaces {
		if ns != nil {
			t.namespaces[ns.Name] = ns
		}
	}
	for _, svc := range s.Services {
		if svc == nil {
			continue
		}
		t.serviceByName[nsName{svc.Namespace, svc.Name}] = svc
		if len(svc.Spec.Selector) == 0 || svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		idx := t.services[svc.Namespace]
		if idx == nil {
			idx = &selectorIndex[selectedService]{}
			t.services[svc.Namespace] = idx
		}
		idx.add(svc.Spec.Selector, selectedService{svc, joinKey(svc.Namespace, t.hostname(svc))})
	}
	for _, gw := range s.Gateways {
		if gw != nil && string(gw.Spec.GatewayClassName) == WaypointClass {
			t.waypoints[nsName{gw.Namespace, gw.Name}] = gw
		}
	}
	return t
}

// Object references of the kinds translation reports on.
func podRef(p *corev1.Pod) ObjectRef { return ObjectRef{"", "Pod", p.Namespace, p.Name} }
func namespaceRef(name string) ObjectRef {
	return ObjectRef{"", "Namespace", "", name}
}
func serviceRef(s *corev1.Service) ObjectRef {
	return ObjectRef{"", "Service", s.Namespace, s.Name}
}
func serviceEntryRef(s *networkingv1.ServiceEntry) ObjectRef {
	return ObjectRef{"networking.istio.io", "ServiceEntry", s.Namespace, s.Name}
}
func peerAuthRef(p *securityv1.PeerAuthentication) ObjectRef {
	return ObjectRef{"security.istio.io", "PeerAuthentication", p.Namespace, p.Name}
}
func authzPolicyRef(p *securityv1.AuthorizationPolicy) ObjectRef {
	return ObjectRef{"security.istio.io", "AuthorizationPolicy", p.Namespace, p.Name}
}

// validRef reports whether a namespaced object's namespace and name can
// form resource names ("namespace/name" with one slash). The API server
// guarantees it; files and fuzzers do not. Objects that fail are skipped
// and reported.
func (t *translator) validRef(ref ObjectRef) bool {
	if validName(ref.Namespace) && validName(ref.Name) {
		return true
	}
	t.conds.fail(ref, ZtunnelAccepted, ReasonInvalidValue, "metadata: namespace and name must be non-empty and without \"/\"; skipped")
	return false
}

func validName(s string) bool { return s != "" && !strings.Contains(s, "/") }

// validSegment reports whether s can be a SPIFFE ID path segment, as a
// mesh workload's namespace and service account must.
func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// sortedUnique sorts names and drops repeats.
func sortedUnique(names []string) []string {
	slices.Sort(names)
	return slices.Compact(names)
}

func joinKey(namespace, name string) string { return namespace + "/" + name }

// quoteList renders values for messages.
func quoteList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = `"` + v + `"`
	}
	return strings.Join(q, ", ")
}
