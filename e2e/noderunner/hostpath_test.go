package noderunner

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/internal/kubetest"
)

func TestPrivileges(t *testing.T) {
	uid, gid, fsg := int64(1337), int64(1337), int64(1337)
	root := int64(0)
	no, yes := false, true
	for _, tc := range []struct {
		name string
		psc  *corev1.PodSecurityContext
		sc   *corev1.SecurityContext
		want string
	}{
		{"nothing asked", nil, nil, ""},
		{"privileged keeps root's all", nil, &corev1.SecurityContext{Privileged: &yes, RunAsUser: &root}, ""},
		{"chart's ztunnel: root with two capabilities",
			nil, &corev1.SecurityContext{RunAsUser: &root, RunAsGroup: &gid, AllowPrivilegeEscalation: &no,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}}},
			"setpriv --regid=1337 --clear-groups --bounding-set=-all,+net_admin,+sys_admin --no-new-privs"},
		{"chart's zmeshd: a user with none",
			&corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &gid, FSGroup: &fsg},
			&corev1.SecurityContext{AllowPrivilegeEscalation: &no, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			"setpriv --reuid=1337 --regid=1337 --groups=1337 --bounding-set=-all --no-new-privs"},
		{"a user with one capability keeps it as ambient",
			&corev1.PodSecurityContext{RunAsUser: &uid},
			&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}},
			"setpriv --reuid=1337 --clear-groups --bounding-set=-all,+net_bind_service --inh-caps=+net_bind_service --ambient-caps=+net_bind_service"},
	} {
		pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tc.psc}}
		got := strings.Join(privileges(pod, &corev1.Container{SecurityContext: tc.sc}), " ")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestContainerHostPathSecretDNSAndUser runs a stand-in image as the chart's
// components are run: a hostPath mapped into the node's own tree, a Secret
// with its mode and the pod's fsGroup, the cluster DNS in /etc/resolv.conf,
// KUBERNETES_SERVICE_HOST, and the securityContext's user.
func TestContainerHostPathSecretDNSAndUser(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	ns := "runner"
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts"},
		Data: map[string][]byte{"root-key.pem": []byte("KEY")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("/var/run/zmesh-runner-test-%d", os.Getpid())
	hostRoot := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	if err := os.Chmod(filepath.Dir(out), 0o777); err != nil {
		t.Fatal(err)
	}
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	mode := int32(0o440)
	uid, fsg := int64(1337), int64(1338)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "z-1", Namespace: ns, UID: "u-2"},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &uid, FSGroup: &fsg},
			Containers: []corev1.Container{{
				Name: "main", Image: "zmesh/catter:latest", Args: []string{base, out},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "run", MountPath: base + "/run"},
					{Name: "ca", MountPath: base + "/ca", ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/ztunnel", Type: &dirOrCreate}}},
				{Name: "ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "cacerts", DefaultMode: &mode}}},
			},
		},
	}
	bin := t.TempDir()
	// The binary and the output are reached as 1337 through the test's
	// temporary directories.
	os.Chmod(filepath.Dir(bin), 0o755)
	os.Chmod(bin, 0o755)
	script := "#!/bin/sh\n{ cat \"$1/ca/root-key.pem\"; echo; id -u; id -G; echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; grep nameserver /etc/resolv.conf; grep search /etc/resolv.conf; echo hi > \"$1/run/written\" && echo wrote; } > \"$2\" 2>&1\n"
	if err := os.WriteFile(filepath.Join(bin, "catter"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	im := &Images{Bin: bin, Dir: t.TempDir(), Client: env.Client, HostRoot: hostRoot,
		APIServer: netip.MustParseAddrPort("10.96.0.1:443"), DNS: netip.MustParseAddr("10.244.1.1")}
	t.Cleanup(func() {
		if err := im.Close(); err != nil {
			t.Error(err)
		}
	})
	// The host tree's directory is the pod's to write: the stand-in runs as
	// 1337.
	os.MkdirAll(filepath.Join(hostRoot, "var/run/ztunnel"), 0o777)
	os.Chmod(filepath.Join(hostRoot, "var/run/ztunnel"), 0o777)
	c, b, _ := im.zmeshContainer(pod)
	cmd, err := im.command(ctx, pod, c, b, netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.44.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("container: %v: %s", err, o)
	}
	got, _ := os.ReadFile(out)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	want := []string{"KEY", "1337", "1337 1338", "10.96.0.1:443", "nameserver 10.244.1.1",
		"search runner.svc.cluster.local svc.cluster.local cluster.local", "wrote"}
	if !slices.Equal(lines, want) {
		t.Errorf("the container saw\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	// What it wrote through the hostPath is in the node's tree.
	if b, err := os.ReadFile(filepath.Join(hostRoot, "var/run/ztunnel/written")); err != nil || string(b) != "hi\n" {
		t.Errorf("node tree's var/run/ztunnel/written = %q, %v", b, err)
	}
	if !slices.Contains(im.hostPaths(), "/var/run/ztunnel") {
		t.Errorf("hostPaths = %v, want /var/run/ztunnel (the CNI plugins see it)", im.hostPaths())
	}
	if _, err := os.Stat("/var/run/ztunnel/written"); err == nil {
		t.Error("the hostPath reached the machine's own /var/run/ztunnel")
	}
}
