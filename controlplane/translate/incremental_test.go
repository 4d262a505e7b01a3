package translate

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/internal/golden"
)

// TestIncrementalEquivalence applies random sequences of changes to
// snapshots, building each next one as an informer-fed source does (copy
// the lists, replace the changed objects' pointers), and checks after each
// step that Incremental gives exactly what Translate gives. The seeds are a
// small generated mesh and every golden input (which between them use
// waypoints, port-level and conflicting PeerAuthentications, ServiceEntry
// selectors and the conditions pods get).
func TestIncrementalEquivalence(t *testing.T) {
	type seed struct {
		name string
		opts Options
		snap *model.Snapshot
	}
	seeds := []seed{{"modeltest", Options{Mesh: model.DefaultMesh()}, modeltest.Mesh(3, 3, 2)}}
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txtar"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		ar := golden.Parse(data)
		in, _ := ar.File("input.yaml")
		opts := Options{Mesh: model.DefaultMesh()}
		if o, ok := ar.File("options"); ok {
			parseOptions(t, &opts, string(o))
		}
		seeds = append(seeds, seed{strings.TrimSuffix(filepath.Base(file), ".txtar"), opts, modeltest.Decode(t, in)})
	}
	steps := 300
	if testing.Short() {
		steps = 60
	}
	for i, sd := range seeds {
		t.Run(sd.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			var inc Incremental
			snap := sd.snap
			assertEquivalent(t, "start", inc.Translate(sd.opts, snap), Translate(sd.opts, snap))
			for step := range steps {
				next, what, podsOnly := mutate(rng, snap)
				full := inc.full
				got := inc.Translate(sd.opts, next)
				assertEquivalent(t, fmt.Sprintf("step %d (%s)", step, what), got, Translate(sd.opts, next))
				if podsOnly && inc.full != full {
					t.Fatalf("step %d (%s): only pods changed, yet the whole snapshot was translated", step, what)
				}
				snap = next
			}
		})
	}
}

// TestIncrementalReuse: a pod change translates one pod; every other
// Address keeps its pointer, which is what spares xds.Server encoding it.
func TestIncrementalReuse(t *testing.T) {
	opts := Options{Mesh: model.DefaultMesh()}
	snap := modeltest.Mesh(2, 2, 2)
	var inc Incremental
	before := inc.Translate(opts, snap)

	next := *snap
	next.Pods = slices.Clone(snap.Pods)
	p := next.Pods[3].DeepCopy()
	p.Status.Conditions = nil
	next.Pods[3] = p
	after := inc.Translate(opts, &next)
	assertEquivalent(t, "readiness", after, Translate(opts, &next))
	uid := PodUID("Kubernetes", p.Namespace, p.Name)
	for name, a := range after.Addresses {
		if same := before.Addresses[name] == a; same == (name == uid) {
			t.Errorf("%s: pointer reused %v", name, same)
		}
	}
	for name, a := range after.Authorizations {
		if before.Authorizations[name] != a {
			t.Errorf("authorization %s: new pointer", name)
		}
	}
	if inc.full != 1 {
		t.Errorf("%d full translations, want 1", inc.full)
	}

	// A pod removed and one added: every other pod keeps its result.
	third := next
	gone, added := next.Pods[1], next.Pods[5].DeepCopy()
	added.Name += "-new"
	added.Status.PodIP, added.Status.PodIPs = "10.99.0.1", []corev1.PodIP{{IP: "10.99.0.1"}}
	third.Pods = append(slices.Delete(slices.Clone(next.Pods), 1, 2), added)
	model.SortByName(third.Pods)
	last := inc.Translate(opts, &third)
	assertEquivalent(t, "removed and added", last, Translate(opts, &third))
	goneUID, addedUID := PodUID("Kubernetes", gone.Namespace, gone.Name), PodUID("Kubernetes", added.Namespace, added.Name)
	for name, a := range last.Addresses {
		if same := after.Addresses[name] == a; same == (name == addedUID) {
			t.Errorf("%s: pointer reused %v", name, same)
		}
	}
	if _, ok := last.Addresses[goneUID]; ok || inc.full != 1 {
		t.Errorf("removed pod still there (%v) or %d full translations", ok, inc.full)
	}

	// The files source: the same objects, all decoded afresh.
	fresh := freshCopy(&next)
	assertEquivalent(t, "fresh", inc.Translate(opts, fresh), Translate(opts, fresh))
	if inc.full != 2 {
		t.Errorf("%d full translations, want 2", inc.full)
	}
}

func assertEquivalent(t *testing.T, step string, got, want *Output) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(want.Addresses)) {
		if g, ok := got.Addresses[name]; !ok || !proto.Equal(g, want.Addresses[name]) {
			t.Fatalf("%s: address %s:\n got %v\nwant %v", step, name, g, want.Addresses[name])
		}
	}
	for name := range got.Addresses {
		if _, ok := want.Addresses[name]; !ok {
			t.Fatalf("%s: extra address %s", step, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want.Authorizations)) {
		if g, ok := got.Authorizations[name]; !ok || !proto.Equal(g, want.Authorizations[name]) {
			t.Fatalf("%s: authorization %s:\n got %v\nwant %v", step, name, g, want.Authorizations[name])
		}
	}
	for name := range got.Authorizations {
		if _, ok := want.Authorizations[name]; !ok {
			t.Fatalf("%s: extra authorization %s", step, name)
		}
	}
	if !slices.Equal(got.Conditions, want.Conditions) {
		t.Fatalf("%s: conditions differ:\n%s", step, diffLines(conditionLines(want.Conditions), conditionLines(got.Conditions)))
	}
}

func conditionLines(cs []Condition) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%s %s %v %s: %s\n", c.Object, c.Type, c.Status, c.Reason, c.Message)
	}
	return b.String()
}

// mutate returns a snapshot with one random change, as a source builds
// it: lists copied, changed objects replaced, others shared. podsOnly
// tells that only pods changed.
func mutate(rng *rand.Rand, s *model.Snapshot) (next *model.Snapshot, what string, podsOnly bool) {
	n := *s
	next = &n
	pod := func() (int, *corev1.Pod) {
		if len(s.Pods) == 0 {
			return -1, nil
		}
		i := rng.IntN(len(s.Pods))
		return i, s.Pods[i].DeepCopy()
	}
	replacePod := func(i int, p *corev1.Pod) {
		next.Pods = slices.Clone(s.Pods)
		next.Pods[i] = p
	}
	switch k := rng.IntN(14); k {
	case 0, 1, 2:
		i, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		ready := corev1.ConditionTrue
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = corev1.ConditionFalse
			}
		}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}
		if rng.IntN(8) == 0 {
			p.Status.Phase = corev1.PodPending
		}
		replacePod(i, p)
		return next, "pod readiness " + p.Name, true
	case 3, 4:
		i, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		relabel(rng, s, p)
		replacePod(i, p)
		return next, "pod labels " + p.Name, true
	case 5:
		_, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		p.Name = fmt.Sprintf("%s-%d", p.Name, rng.IntN(1000))
		p.Status.PodIP = fmt.Sprintf("10.250.%d.%d", rng.IntN(256), rng.IntN(256))
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
		if rng.IntN(2) == 0 {
			relabel(rng, s, p)
		}
		next.Pods = append(slices.Clone(s.Pods), p)
		model.SortByName(next.Pods)
		return next, "pod added " + p.Name, true
	case 6:
		i, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		next.Pods = slices.Delete(slices.Clone(s.Pods), i, i+1)
		return next, "pod removed " + p.Name, true
	case 7:
		if len(s.Namespaces) == 0 {
			return next, "nothing", true
		}
		i := rng.IntN(len(s.Namespaces))
		ns := s.Namespaces[i].DeepCopy()
		if ns.Labels[labelDataplaneMode] == dataplaneAmbient {
			delete(ns.Labels, labelDataplaneMode)
		} else {
			ns.Labels = setLabel(ns.Labels, labelDataplaneMode, dataplaneAmbient)
		}
		next.Namespaces = slices.Clone(s.Namespaces)
		next.Namespaces[i] = ns
		return next, "namespace labels " + ns.Name, false
	case 8:
		if len(s.AuthorizationPolicies) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(s.AuthorizationPolicies))
			next.AuthorizationPolicies = slices.Delete(slices.Clone(s.AuthorizationPolicies), i, i+1)
			return next, "authorization policy removed", false
		}
		_, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		ap := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: fmt.Sprintf("ap-%d", rng.IntN(1000))},
			Spec: securityapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: someLabels(rng, p)},
				Action:   securityapi.AuthorizationPolicy_Action(rng.IntN(2)), // ALLOW or DENY
			},
		}
		next.AuthorizationPolicies = append(slices.Clone(s.AuthorizationPolicies), ap)
		model.SortByName(next.AuthorizationPolicies)
		return next, "authorization policy added " + ap.Name, false
	case 9:
		if len(s.PeerAuthentications) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(s.PeerAuthentications))
			next.PeerAuthentications = slices.Delete(slices.Clone(s.PeerAuthentications), i, i+1)
			return next, "peer authentication removed", false
		}
		_, p := pod()
		if p == nil {
			return next, "nothing", true
		}
		modes := []securityapi.PeerAuthentication_MutualTLS_Mode{modeUnset, modeStrict, modePermissive}
		pa := &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: p.Namespace, Name: fmt.Sprintf("pa-%d", rng.IntN(1000)),
				CreationTimestamp: metav1.NewTime(time.Unix(int64(rng.IntN(5)), 0)),
			},
			Spec: securityapi.PeerAuthentication{
				Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: modes[rng.IntN(3)]},
			},
		}
		if rng.IntN(4) != 0 {
			pa.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: someLabels(rng, p)}
		}
		if rng.IntN(2) == 0 {
			pa.Spec.PortLevelMtls = map[uint32]*securityapi.PeerAuthentication_MutualTLS{
				8080: {Mode: modes[rng.IntN(3)]}, 9090: {Mode: modes[rng.IntN(3)]},
			}
		}
		next.PeerAuthentications = append(slices.Clone(s.PeerAuthentications), pa)
		model.SortByName(next.PeerAuthentications)
		return next, "peer authentication added " + pa.Name, false
	case 10:
		if len(s.Services) == 0 {
			return next, "nothing", true
		}
		i := rng.IntN(len(s.Services))
		svc := s.Services[i].DeepCopy()
		if _, p := pod(); p != nil && rng.IntN(3) != 0 {
			svc.Spec.Selector = someLabels(rng, p)
		} else {
			svc.Spec.Selector = map[string]string{"app": "nothing"}
		}
		next.Services = slices.Clone(s.Services)
		next.Services[i] = svc
		return next, "service selector " + svc.Name, false
	case 11:
		return freshCopy(s), "every object decoded afresh", false
	default:
		return next, "nothing", true
	}
}

// relabel changes a pod's labels to ones the snapshot's selectors and
// waypoints care about.
func relabel(rng *rand.Rand, s *model.Snapshot, p *corev1.Pod) {
	switch rng.IntN(5) {
	case 0:
		if len(s.Services) > 0 {
			for k, v := range s.Services[rng.IntN(len(s.Services))].Spec.Selector {
				p.Labels = setLabel(p.Labels, k, v)
			}
		}
	case 1:
		for k := range p.Labels {
			delete(p.Labels, k)
			break
		}
	case 2:
		mode := []string{dataplaneAmbient, dataplaneNone, ""}[rng.IntN(3)]
		p.Labels = setLabel(p.Labels, labelDataplaneMode, mode)
	case 3:
		name := []string{"none", "missing"}[rng.IntN(2)]
		if len(s.Gateways) > 0 {
			name = s.Gateways[rng.IntN(len(s.Gateways))].Name
		}
		p.Labels = setLabel(p.Labels, labelUseWaypoint, name)
	default:
		p.Labels = setLabel(p.Labels, "app", fmt.Sprintf("app-%02d", rng.IntN(3)))
	}
}

func setLabel(labels map[string]string, k, v string) map[string]string {
	if labels == nil {
		labels = map[string]string{}
	}
	labels[k] = v
	return labels
}

// someLabels is a selector matching p: one of its labels, or (when it has
// none) a label no pod has.
func someLabels(rng *rand.Rand, p *corev1.Pod) map[string]string {
	keys := slices.Sorted(maps.Keys(p.Labels))
	if len(keys) == 0 {
		return map[string]string{"app": "nothing"}
	}
	k := keys[rng.IntN(len(keys))]
	return map[string]string{k: p.Labels[k]}
}

// freshCopy is what the files source hands over when nothing changed:
// equal objects, none pointer-equal to the last ones.
func freshCopy(s *model.Snapshot) *model.Snapshot {
	return &model.Snapshot{
		Namespaces:            deepCopies(s.Namespaces, (*corev1.Namespace).DeepCopy),
		Pods:                  deepCopies(s.Pods, (*corev1.Pod).DeepCopy),
		Services:              deepCopies(s.Services, (*corev1.Service).DeepCopy),
		ServiceEntries:        deepCopies(s.ServiceEntries, (*networkingv1.ServiceEntry).DeepCopy),
		PeerAuthentications:   deepCopies(s.PeerAuthentications, (*securityv1.PeerAuthentication).DeepCopy),
		AuthorizationPolicies: deepCopies(s.AuthorizationPolicies, (*securityv1.AuthorizationPolicy).DeepCopy),
		GatewayClasses:        deepCopies(s.GatewayClasses, (*gatewayv1.GatewayClass).DeepCopy),
		Gateways:              deepCopies(s.Gateways, (*gatewayv1.Gateway).DeepCopy),
	}
}

func deepCopies[T any](in []*T, cp func(*T) *T) []*T {
	out := make([]*T, len(in))
	for i, o := range in {
		out[i] = cp(o)
	}
	return out
}
