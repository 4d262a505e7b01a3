package noderunner

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/internal/kubetest"
)

func TestImageBinary(t *testing.T) {
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "waypoint"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	im := &Images{Bin: bin}
	for image, want := range map[string]bool{
		"zmesh/waypoint:latest":                true,
		"registry.local:5000/zmesh/waypoint":   true,
		"zmesh/waypoint@sha256:0123":           true,
		"registry.local:5000/zmesh/waypoint:1": true,
		"zmesh/ztunnel:latest":                 false, // not built here
		"nginx":                                false,
		"waypoint-extra:1":                     false,
	} {
		if _, got := im.imageBinary(image); got != want {
			t.Errorf("imageBinary(%q) = %v, want %v", image, got, want)
		}
	}
	var none *Images
	if _, ok := none.imageBinary("zmesh/waypoint"); ok {
		t.Error("a runner without Images runs zmesh images as binaries")
	}
}

// A tag with a directory of its own under Bin runs that build; any other
// tag, and a tag naming no binary there, runs Bin's.
func TestImageBinaryByTag(t *testing.T) {
	bin := t.TempDir()
	for _, p := range []string{"ztunnel", "zmeshd", "prev/ztunnel"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(bin, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	im := &Images{Bin: bin}
	for image, want := range map[string]string{
		"zmesh/ztunnel:prev":                     "prev/ztunnel",
		"registry.local:5000/zmesh/ztunnel:prev": "prev/ztunnel",
		"zmesh/ztunnel:latest":                   "ztunnel",
		"zmesh/ztunnel":                          "ztunnel",
		"zmesh/ztunnel@sha256:0123":              "ztunnel",
		"zmesh/zmeshd:prev":                      "zmeshd", // prev holds no zmeshd
		"zmesh/ztunnel:..":                       "ztunnel",
	} {
		got, ok := im.imageBinary(image)
		if !ok || got != filepath.Join(bin, want) {
			t.Errorf("imageBinary(%q) = %q, %v, want %q", image, got, ok, filepath.Join(bin, want))
		}
	}
	if _, ok := im.imageBinary("zmesh/prev:x"); ok {
		t.Error("the tag directory prev runs as an image")
	}
}

func TestContainerEnvResolvesDownwardAPI(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "wp-1", Namespace: "ns", UID: "u-1", Labels: map[string]string{"app": "wp"}},
		Spec:       corev1.PodSpec{NodeName: "node-0", ServiceAccountName: "wp"},
	}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	c := &corev1.Container{Env: []corev1.EnvVar{
		{Name: "PLAIN", Value: "x"},
		field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
		field("NODE_NAME", "spec.nodeName"), field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		field("INSTANCE_IP", "status.podIP"), field("HOST_IP", "status.hostIP"), field("APP", "metadata.labels['app']"),
	}}
	env, err := containerEnv(pod, c, netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("192.168.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PLAIN=x", "POD_NAME=wp-1", "POD_NAMESPACE=ns", "NODE_NAME=node-0", "SERVICE_ACCOUNT=wp",
		"INSTANCE_IP=10.0.0.5", "HOST_IP=192.168.0.2", "APP=wp", "HOSTNAME=wp-1"} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %s: %v", want, env)
		}
	}
	c.Env = []corev1.EnvVar{field("X", "status.phase")}
	if _, err := containerEnv(pod, c, netip.Addr{}, netip.Addr{}); err == nil || !strings.Contains(err.Error(), "env X") || !strings.Contains(err.Error(), "status.phase") {
		t.Errorf("unsupported fieldPath: err = %v, want one naming the variable and the field", err)
	}
}

// TestContainerRunsWithVolumesAtMountPaths runs a stand-in zmesh image (a
// shell script named like an image) the way the Kubelet runs the waypoint:
// a projected token from the real TokenRequest API and a ConfigMap, each
// bind-mounted at its mountPath in the process's own mount namespace, and
// the args unchanged. Nothing stays mounted on the host.
func TestContainerRunsWithVolumesAtMountPaths(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	ns := "runner"
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "wp"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server adds the service-account volume to every pod; the
	// controller manager (not run here) publishes its CA ConfigMap.
	if _, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
		Data: map[string]string{"ca.crt": "CA"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "roots"},
		Data: map[string]string{"root-cert.pem": "ROOTS"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("/var/run/zmesh-runner-test-%d", os.Getpid())
	out := filepath.Join(t.TempDir(), "out")
	optional := true
	expiry := int64(3600)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "wp-1", Namespace: ns},
		Spec: corev1.PodSpec{
			ServiceAccountName: "wp",
			Containers: []corev1.Container{{
				Name: "main", Image: "zmesh/catter:latest",
				Args: []string{base + "/tokens/istio-token", base + "/roots/root-cert.pem", out},
				Env:  []corev1.EnvVar{{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "token", MountPath: base + "/tokens", ReadOnly: true},
					{Name: "roots", MountPath: base + "/roots", ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: &expiry, Path: "istio-token"}}}}}},
				{Name: "roots", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "roots"}, Optional: &optional}}},
			},
		},
	}
	created, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	script := "#!/bin/sh\nset -e\n{ cat \"$1\"; echo; cat \"$2\"; echo; echo \"POD=$POD\"; grep -c \"" + filepath.Base(base) + "/\" /proc/self/mountinfo; } > \"$3\"\n"
	if err := os.WriteFile(filepath.Join(bin, "catter"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	im := &Images{Bin: bin, Dir: t.TempDir(), Client: env.Client}
	t.Cleanup(func() {
		if err := im.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(base); !os.IsNotExist(err) {
			t.Errorf("%s left on the host: %v", base, err)
		}
	})
	c, b, ok := im.zmeshContainer(created)
	if !ok {
		t.Fatal("the stand-in image is not run as a binary")
	}
	cmd, err := im.command(ctx, created, c, b, netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("192.168.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("container: %v: %s", err, o)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 4 {
		t.Fatalf("output = %q, want token, roots, env and mount count", got)
	}
	if lines[1] != "ROOTS" || lines[2] != "POD=wp-1" || lines[3] != "2" {
		t.Errorf("output = %q, want the ConfigMap's content, POD=wp-1 and 2 mounts under %s", got, base)
	}
	parts := strings.Split(lines[0], ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWT", lines[0])
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Aud        []string `json:"aud"`
		Sub        string   `json:"sub"`
		Kubernetes struct {
			Pod struct{ Name, UID string }
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(claims.Aud, []string{"istio-ca"}) || claims.Sub != "system:serviceaccount:"+ns+":wp" || claims.Kubernetes.Pod.UID != string(created.UID) {
		t.Errorf("token claims = %+v, want audience istio-ca, subject %s/wp, bound to the pod", claims, ns)
	}
	// The mounts lived and died with the process's mount namespace.
	if entries, err := os.ReadDir(base + "/roots"); err != nil || len(entries) != 0 {
		t.Errorf("host's %s/roots = %v, %v: want an empty directory (the mount stayed in the pod's namespace)", base, entries, err)
	}
	im.release(&RunningPod{UID: created.UID})
	if _, err := os.Stat(filepath.Join(im.Dir, string(created.UID))); !os.IsNotExist(err) {
		t.Errorf("the pod's volume files stay after release: %v", err)
	}
}
