// Package modeltest builds model snapshots for the control plane's tests:
// large generated meshes for benchmarks and scale tests, and golden inputs
// decoded from YAML.
package modeltest

import (
	"fmt"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Mesh is a mesh of namespaces × services × pods per service, each
// namespace ambient and STRICT, with one selector policy per service.
func Mesh(namespaces, servicesPerNS, podsPerService int) *model.Snapshot {
	s := &model.Snapshot{}
	ip := 0
	for n := range namespaces {
		ns := fmt.Sprintf("ns-%03d", n)
		s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"},
		}})
		s.PeerAuthentications = append(s.PeerAuthentications, &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns},
			Spec:       securityapi.PeerAuthentication{Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}},
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
