package translate

import (
	"fmt"
	"testing"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/zmesh/zmesh/controlplane/model"
)

// bigSnapshot is a mesh of namespaces × services × pods per service, each
// namespace ambient and STRICT, with one selector policy per service.
func bigSnapshot(namespaces, servicesPerNS, podsPerService int) *model.Snapshot {
	s := &model.Snapshot{}
	ip := 0
	for n := range namespaces {
		ns := fmt.Sprintf("ns-%03d", n)
		s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{labelDataplaneMode: dataplaneAmbient},
		}})
		s.PeerAuthentications = append(s.PeerAuthentications, &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns},
			Spec:       securityapi.PeerAuthentication{Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: modeStrict}},
		})
		for sv := range servicesPerNS {
			app := fmt.Sprintf("app-%02d", sv)
			s.Services = append(s.Services, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
				Spec: corev1.ServiceSpec{
					Selector:   map[string]string{"app": app},
					ClusterIP:  fmt.Sprintf("10.96.%d.%d", n, sv),
					ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", n, sv)},
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
						{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090)},
					},
				},
			})
			s.AuthorizationPolicies = append(s.AuthorizationPolicies, &securityv1.AuthorizationPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
				Spec: securityapi.AuthorizationPolicy{
					Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": app}},
					Rules: []*securityapi.Rule{{
						From: []*securityapi.Rule_From{{Source: &securityapi.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/client"}}}},
						To:   []*securityapi.Rule_To{{Operation: &securityapi.Operation{Ports: []string{"8080"}}}},
					}},
				},
			})
			for p := range podsPerService {
				ip++
				s.Pods = append(s.Pods, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{
						Name: fmt.Sprintf("%s-7d9f8c6b5-%05d", app, p), Namespace: ns,
						Labels: map[string]string{"app": app, "version": "v1", "pod-template-hash": "7d9f8c6b5"},
						OwnerReferences: []metav1.OwnerReference{{
							Kind: "ReplicaSet", Name: app + "-7d9f8c6b5", Controller: ptr(true),
						}},
					},
					Spec: corev1.PodSpec{
						ServiceAccountName: app, NodeName: fmt.Sprintf("node-%d", ip%50),
						Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
					},
					Status: corev1.PodStatus{
						Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.%d.%d.%d", ip>>16, (ip>>8)&255, ip&255),
						Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
					},
				})
			}
		}
	}
	for _, p := range s.Pods {
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	s.Sort()
	return s
}

func ptr[T any](v T) *T { return &v }

// BenchmarkTranslate: 10 000 pods in 2 000 services across 100 namespaces.
func BenchmarkTranslate(b *testing.B) {
	s := bigSnapshot(100, 20, 5)
	opts := Options{Mesh: model.DefaultMesh()}
	b.ReportAllocs()
	for b.Loop() {
		Translate(opts, s)
	}
}

func TestBigSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s := bigSnapshot(100, 20, 5)
	out := Translate(Options{Mesh: model.DefaultMesh()}, s)
	// 10 000 workloads, 2 000 services; 2 000 policies and the static strict one.
	if got, want := len(out.Addresses), 12000; got != want {
		t.Errorf("%d addresses, want %d", got, want)
	}
	if got, want := len(out.Authorizations), 2001; got != want {
		t.Errorf("%d authorizations, want %d", got, want)
	}
	snap := acceptedByZtunnel(t, out)
	w := snap.Workload(PodUID("Kubernetes", "ns-042", "app-07-7d9f8c6b5-00003"))
	if w == nil || !w.HBONE() || len(w.Policies) != 2 || w.Services["ns-042/app-07.ns-042.svc.cluster.local"][80] != 8080 {
		t.Errorf("workload: %+v", w)
	}
}
