package noderunner

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/zmesh/zmesh/e2e/netenv"
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

// slowPlugin is a CNI plugin whose ADD for a pod named slow-* announces
// itself in $DIR/started-<pod> and waits until $DIR/release exists; other
// pods get an address at once.
const slowPlugin = `#!/bin/sh
cat >/dev/null
dir=%q
case "$CNI_COMMAND" in
ADD)
  pod=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^K8S_POD_NAME=//p')
  case "$pod" in slow-*)
    : > "$dir/started-$pod"
    while [ ! -e "$dir/release" ]; do sleep 0.05; done ;;
  esac
  n=$(ls "$dir" | wc -l)
  echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.'$((n + 10))'/24"}]}' ;;
VERSION)
  echo '{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}' ;;
esac
`

// A pod whose sandbox takes long to set up holds up no other pod of the
// node: with three slow CNI ADDs under way, a fourth pod still starts.
func TestKubeletStartsPodsIndependently(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces)")
	}
	dir, bin, conf := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "slow"), []byte(fmt.Sprintf(slowPlugin, dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "10-slow.conflist"),
		[]byte(`{"cniVersion": "1.0.0", "name": "slow", "plugins": [{"type": "slow"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	host, err := netenv.NewNS("host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	client := fake.NewClientset()
	k := &Kubelet{Client: client, Node: "node-1", Host: host, HostIP: netip.MustParseAddr("10.44.0.2"),
		PodCIDR: netip.MustParsePrefix("10.99.0.0/24"), CNIBinDir: bin, CNIConfDir: conf}
	ctx, cancel := context.WithCancel(context.Background())
	if err := k.Register(ctx, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(dir, "release"), nil, 0o644) // let the slow ADDs end
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node runner teardown: %v", err)
		}
	})
	create := func(name string) {
		t.Helper()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + name)},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		if _, err := client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	running := func(name string) bool {
		p, err := client.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	}
	slow := []string{"slow-1", "slow-2", "slow-3"}
	for _, name := range slow {
		create(name)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, name := range slow {
		for {
			if _, err := os.Stat(filepath.Join(dir, "started-"+name)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the CNI ADD of %s did not start", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	create("fast")
	deadline = time.Now().Add(20 * time.Second)
	for !running("fast") {
		if time.Now().After(deadline) {
			t.Fatal("pod fast is not Running while three other pods' CNI ADDs are under way")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, name := range slow {
		if running(name) {
			t.Errorf("pod %s is Running before its CNI ADD returned", name)
		}
	}
	// And the slow ones follow once their sandboxes are set up.
	os.WriteFile(filepath.Join(dir, "release"), nil, 0o644)
	deadline = time.Now().Add(20 * time.Second)
	for _, name := range slow {
		for !running(name) {
			if time.Now().After(deadline) {
				t.Fatalf("pod %s is not Running after its CNI ADD returned", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
