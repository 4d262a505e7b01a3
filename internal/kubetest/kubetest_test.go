package kubetest

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestStartServesTheAPI(t *testing.T) {
	e := ForTest(t)
	ns, err := e.Client.CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("API server %s serves namespace %q", e.APIServer, ns.Name)
	out, err := e.KubectlRun(t.Context(), "", "get", "serviceaccount", "default", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "serviceaccount/default" {
		t.Fatalf("kubectl get serviceaccount default = %q", out)
	}
}
