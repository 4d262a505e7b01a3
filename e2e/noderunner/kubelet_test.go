package noderunner

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// The app learns its pod's ports and labels from the command's env.
func TestAppCommandPassesThePod(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews-v2", UID: "0123456789abcdef",
			Labels: map[string]string{"app": "reviews", "version": "v2"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "reviews",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}, {Name: "grpc", ContainerPort: 9090}},
		}}},
	}
	cmd := AppCommand(podapp.Env, t.TempDir())(pod)
	env := map[string]string{}
	for _, kv := range cmd.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	got, err := podapp.ParsePod(env[podapp.Env], env[podapp.PodEnv])
	if err != nil {
		t.Fatal(err)
	}
	if got.ID() != "shop/reviews-v2" || got.Version() != "v2" || got.Service != "reviews" ||
		fmt.Sprint(got.Serves()) != "[{http 9080} {grpc 9090} { 8080} { 9000}]" {
		t.Errorf("the app sees %+v, serving %v", got, got.Serves())
	}
}
