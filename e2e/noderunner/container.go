package noderunner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/zmesh/zmesh/e2e/netenv"
)

// Images is the container runtime part of the node runner for pods whose
// image is a zmesh image: instead of pulling an image, it runs the binary of
// that name built from this tree, as the container would run it — the
// container's command and args unchanged, its env (downward API fields
// resolved), and its volumes (projected service-account tokens from the
// real TokenRequest API, ConfigMaps, emptyDirs) bind-mounted at their
// mountPaths in a mount namespace of the pod's own, so the binary finds its
// files exactly where the manifest says. Pods of any other image run the
// node runner's App instead.
type Images struct {
	// Bin holds the built binaries, one per zmesh image (waypoint, …).
	Bin string
	// Dir is where pods' volume contents are written (one directory per
	// pod, removed when the pod stops).
	Dir    string
	Client kubernetes.Interface
	// Without a cluster (Client nil), Token and ConfigMap stand in for the
	// TokenRequest API and the namespace's ConfigMaps: Token returns the
	// token of the pod's service account for an audience, ConfigMap a
	// ConfigMap's data (found false when there is none).
	Token     func(pod *corev1.Pod, audience string) (string, error)
	ConfigMap func(namespace, name string) (data map[string]string, found bool)
	// Logs receives each pod's output (one file per pod); empty discards.
	Logs string
	// HostRoot is the node's own file system tree: a hostPath volume's path
	// P is HostRoot/P, so that two nodes on one machine keep their sockets,
	// CNI directories and bpffs apart. Empty refuses hostPath volumes.
	HostRoot string
	// APIServer is the kubernetes Service's address, given to every
	// container as KUBERNETES_SERVICE_HOST and _PORT as the kubelet does
	// (invalid: not set).
	APIServer netip.AddrPort
	// DNS is the node's cluster DNS server: every pod gets a resolv.conf
	// naming it, with the kubelet's search path for the pod's namespace,
	// at /etc/resolv.conf (invalid: the host's resolv.conf).
	DNS netip.Addr
	// DomainSuffix is the cluster's DNS domain (default cluster.local).
	DomainSuffix string

	mu sync.Mutex
	// hostDirs are the hostPath directories the node's pods mount.
	hostDirs []string
	// view is where the node's CNI plugins run.
	view nodeView
}

// imageBinary returns the zmesh binary an image runs, if it is a zmesh
// image: the last path element of the image's repository, without tag or
// digest, is the binary's name (zmesh/waypoint:1.2 runs "waypoint"). A
// tag with a directory of its own under Bin runs the binary of that name
// there (zmesh/ztunnel:prev runs Bin/prev/ztunnel when it exists), so two
// tags can run two different builds — an older release beside this tree's;
// any other tag runs Bin's.
func (im *Images) imageBinary(image string) (string, bool) {
	if im == nil {
		return "", false
	}
	repo, _, _ := strings.Cut(image, "@")
	tag := ""
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	name := path.Base(repo)
	if name == "" || name == "." || name == "/" {
		return "", false
	}
	if tag != "" && tag != "." && tag != ".." && !strings.ContainsAny(tag, `/\`) {
		if bin := filepath.Join(im.Bin, tag, name); isFile(bin) {
			return bin, true
		}
	}
	bin := filepath.Join(im.Bin, name)
	if !isFile(bin) {
		return "", false
	}
	return bin, true
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// zmeshContainer is the pod's zmesh container, if its first container
// runs a zmesh image.
func (im *Images) zmeshContainer(pod *corev1.Pod) (*corev1.Container, string, bool) {
	if len(pod.Spec.Containers) == 0 {
		return nil, "", false
	}
	c := &pod.Spec.Containers[0]
	bin, ok := im.imageBinary(c.Image)
	return c, bin, ok
}

// command builds the process of a zmesh container: volumes written under
// the pod's directory, then `unshare --mount` running a shell that
// bind-mounts them at their mountPaths and execs the binary with the
// container's args. The process is started by the caller inside the pod's
// network namespace.
func (im *Images) command(ctx context.Context, pod *corev1.Pod, c *corev1.Container, bin string, podIP, hostIP netip.Addr) (*exec.Cmd, error) {
	dir := filepath.Join(im.Dir, string(pod.UID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	env, err := containerEnv(pod, c, podIP, hostIP)
	if err != nil {
		return nil, err
	}
	if im.APIServer.IsValid() {
		env = append(env, "KUBERNETES_SERVICE_HOST="+im.APIServer.Addr().String(),
			"KUBERNETES_SERVICE_PORT="+strconv.Itoa(int(im.APIServer.Port())))
	}
	vols := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		src, err := im.volume(ctx, pod, v, filepath.Join(dir, "volumes", v.Name))
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		vols[v.Name] = src
	}
	// The shell is the mount namespace's first process: it mounts each
	// volume (argument pairs after "--") and replaces itself with the
	// binary, so the pod's process is the binary itself.
	// Slave: mounts made later on the machine under a shared mount (the
	// pods' network namespaces, see Kubelet.NetnsDir) appear in the pod's
	// namespace, none of the pod's appear outside.
	args := []string{"--mount", "--propagation", "slave", "sh", "-c", mountScript, "sh"}
	for _, m := range c.VolumeMounts {
		src, ok := vols[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume of that name", m.Name)
		}
		if m.SubPath != "" {
			return nil, fmt.Errorf("volumeMount %s: subPath is not supported by the e2e node runner", m.Name)
		}
		if !filepath.IsAbs(m.MountPath) {
			return nil, fmt.Errorf("volumeMount %s: mountPath %q is not absolute", m.Name, m.MountPath)
		}
		im.remember(src, m.MountPath)
		ro := "rw"
		if m.ReadOnly {
			ro = "ro"
		}
		args = append(args, src, m.MountPath, ro)
	}
	if resolv, err := im.resolvConf(pod, dir); err != nil {
		return nil, err
	} else if resolv != "" {
		args = append(args, resolv, "/etc/resolv.conf", "ro")
	}
	args = append(args, "--")
	args = append(args, privileges(pod, c)...)
	args = append(args, bin)
	args = append(args, c.Args...)
	if len(c.Command) > 1 {
		// command[0] is the image's binary; the rest precede args.
		args = slices.Insert(args, len(args)-len(c.Args), c.Command[1:]...)
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = env
	cmd.Dir = "/"
	if im.Logs != "" {
		if f, err := os.Create(filepath.Join(im.Logs, "pod-"+pod.Namespace+"-"+pod.Name+"-"+string(pod.UID)[:8]+".log")); err == nil {
			cmd.Stdout, cmd.Stderr = f, f
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// SharedDir mounts a tmpfs at dir and makes it a shared mount: what is
// mounted under it later appears in every pod's mount namespace (see
// Kubelet.NetnsDir). Unmount it with unix.Unmount once every pod stopped.
func SharedDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs at %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// mountScript is the mount namespace's first process: it mounts each
// volume (argument triples source, mountPath, rw|ro before "--") and
// replaces itself with the rest of its arguments, so the pod's process is
// the binary itself. A file volume (resolv.conf) covers a file.
const mountScript = `set -e
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || : > "$2"; fi
  mount --bind "$1" "$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi
  shift 3
done
shift
exec "$@"`

// resolvConf writes the pod's resolv.conf as the kubelet does for
// dnsPolicy ClusterFirst (and ClusterFirstWithHostNet): the cluster DNS
// server and the search path of the pod's namespace. It returns "" when the
// pod keeps the host's (no cluster DNS, dnsPolicy Default or None, or a
// hostNetwork pod with ClusterFirst).
func (im *Images) resolvConf(pod *corev1.Pod, dir string) (string, error) {
	if !im.DNS.IsValid() {
		return "", nil
	}
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault, corev1.DNSNone:
		return "", nil
	case corev1.DNSClusterFirst, "":
		if pod.Spec.HostNetwork {
			return "", nil
		}
	}
	suffix := im.DomainSuffix
	if suffix == "" {
		suffix = "cluster.local"
	}
	conf := fmt.Sprintf("nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5\n", im.DNS, pod.Namespace, suffix, suffix, suffix)
	p := filepath.Join(dir, "resolv.conf")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}

// privileges returns the setpriv command that gives the container the
// user, groups and capabilities its securityContext asks for (nothing for
// a privileged container or one that says nothing). What the node runner
// honours: runAsUser, runAsGroup, fsGroup and supplementalGroups as the
// process's groups, capabilities drop/add as the bounding set (with the
// added ones inheritable and ambient for a non-root user), and
// allowPrivilegeEscalation=false as no_new_privs. What it does not:
// seccompProfile, readOnlyRootFilesystem, AppArmor and SELinux options,
// and the default capability set of a container runtime (a container that
// drops nothing keeps every capability of root).
func privileges(pod *corev1.Pod, c *corev1.Container) []string {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.Privileged != nil && *sc.Privileged {
		return nil
	}
	uid, gid := sc.RunAsUser, sc.RunAsGroup
	if uid == nil {
		uid = psc.RunAsUser
	}
	if gid == nil {
		gid = psc.RunAsGroup
	}
	var args []string
	if uid != nil && *uid != 0 {
		args = append(args, "--reuid="+strconv.FormatInt(*uid, 10))
	}
	if gid != nil && *gid != 0 {
		args = append(args, "--regid="+strconv.FormatInt(*gid, 10))
	}
	var groups []string
	if psc.FSGroup != nil {
		groups = append(groups, strconv.FormatInt(*psc.FSGroup, 10))
	}
	for _, g := range psc.SupplementalGroups {
		groups = append(groups, strconv.FormatInt(g, 10))
	}
	if len(groups) > 0 {
		args = append(args, "--groups="+strings.Join(groups, ","))
	} else if len(args) > 0 {
		args = append(args, "--clear-groups")
	}
	if caps := sc.Capabilities; caps != nil {
		var set, add []string
		for _, d := range caps.Drop {
			set = append(set, "-"+strings.ToLower(string(d)))
		}
		for _, a := range caps.Add {
			add = append(add, "+"+strings.ToLower(string(a)))
		}
		if set = append(set, add...); len(set) > 0 {
			args = append(args, "--bounding-set="+strings.Join(set, ","))
		}
		if uid != nil && *uid != 0 && len(add) > 0 {
			// A non-root process keeps capabilities across exec only as
			// inheritable and ambient ones.
			args = append(args, "--inh-caps="+strings.Join(add, ","), "--ambient-caps="+strings.Join(add, ","))
		}
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--no-new-privs")
	}
	if len(args) == 0 {
		return nil
	}
	return append([]string{"setpriv"}, args...)
}

// fsGroup is the group a pod's volume files belong to (-1: none).
func fsGroup(pod *corev1.Pod) int {
	if sc := pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		return int(*sc.FSGroup)
	}
	return -1
}

// release removes a stopped pod's volume files.
func (im *Images) release(pod *RunningPod) {
	os.RemoveAll(filepath.Join(im.Dir, string(pod.UID)))
}

// volume writes one pod volume's content under dir and returns dir.
func (im *Images) volume(ctx context.Context, pod *corev1.Pod, v corev1.Volume, dir string) (string, error) {
	if v.HostPath != nil {
		return im.hostPath(v.HostPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if g := fsGroup(pod); g >= 0 {
		// The volume's files belong to the pod's fsGroup, as the kubelet
		// makes them; written later, they are changed after.
		defer chownTree(dir, g)
	}
	switch {
	case v.EmptyDir != nil:
		return dir, nil
	case v.Secret != nil:
		return dir, im.secret(ctx, pod.Namespace, v.Secret, dir)
	case v.ConfigMap != nil:
		return dir, im.configMap(ctx, pod.Namespace, v.ConfigMap.LocalObjectReference.Name, v.ConfigMap.Items, v.ConfigMap.Optional, dir)
	case v.Projected != nil:
		for i, src := range v.Projected.Sources {
			var err error
			switch {
			case src.ServiceAccountToken != nil:
				err = im.token(ctx, pod, src.ServiceAccountToken, dir)
			case src.ConfigMap != nil:
				err = im.configMap(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, dir)
			case src.DownwardAPI != nil:
				err = downwardAPI(pod, src.DownwardAPI.Items, dir)
			default:
				err = errors.New("only serviceAccountToken, configMap and downwardAPI sources are supported by the e2e node runner")
			}
			if err != nil {
				return "", fmt.Errorf("projected.sources[%d]: %w", i, err)
			}
		}
		return dir, nil
	}
	return "", errors.New("only emptyDir, configMap, secret, hostPath and projected volumes are supported by the e2e node runner")
}

// hostPath maps a hostPath volume into the node's own tree (HostRoot),
// creating it for the ...OrCreate types and checking it for the others.
func (im *Images) hostPath(hp *corev1.HostPathVolumeSource) (string, error) {
	if im.HostRoot == "" {
		return "", errors.New("hostPath: the node runner has no host tree (HostRoot)")
	}
	if !filepath.IsAbs(hp.Path) {
		return "", fmt.Errorf("hostPath %q is not absolute", hp.Path)
	}
	p := filepath.Join(im.HostRoot, filepath.Clean(hp.Path))
	defer func() {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			im.mu.Lock()
			if !slices.Contains(im.hostDirs, filepath.Clean(hp.Path)) {
				im.hostDirs = append(im.hostDirs, filepath.Clean(hp.Path))
			}
			im.mu.Unlock()
		}
	}()
	typ := corev1.HostPathUnset
	if hp.Type != nil {
		typ = *hp.Type
	}
	fi, err := os.Stat(p)
	switch typ {
	case corev1.HostPathDirectoryOrCreate:
		if err != nil {
			return p, os.MkdirAll(p, 0o755)
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("hostPath %s (%s in the node's tree) is not a directory", hp.Path, p)
		}
	case corev1.HostPathFileOrCreate:
		if err != nil {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return "", err
			}
			return p, os.WriteFile(p, nil, 0o644)
		}
	case corev1.HostPathDirectory:
		if err != nil || !fi.IsDir() {
			return "", fmt.Errorf("hostPath %s (%s in the node's tree) is not a directory: %v", hp.Path, p, err)
		}
	case corev1.HostPathUnset:
		if err != nil {
			// The kubelet checks nothing for an unset type; a bind mount
			// needs something to bind.
			return p, os.MkdirAll(p, 0o755)
		}
	default:
		if err != nil {
			return "", fmt.Errorf("hostPath %s (%s in the node's tree): %w", hp.Path, p, err)
		}
	}
	return p, nil
}

// hostPaths are the host directories the node's pods mount, shallowest
// first.
func (im *Images) hostPaths() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	out := slices.Clone(im.hostDirs)
	slices.SortFunc(out, func(a, b string) int { return strings.Count(a, "/") - strings.Count(b, "/") })
	return out
}

// secret writes a Secret's keys (or the listed items) as files with the
// volume's mode.
func (im *Images) secret(ctx context.Context, ns string, v *corev1.SecretVolumeSource, dir string) error {
	if im.Client == nil {
		return fmt.Errorf("secret %s: no API server", v.SecretName)
	}
	sec, err := im.Client.CoreV1().Secrets(ns).Get(ctx, v.SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && v.Optional != nil && *v.Optional {
		return nil
	}
	if err != nil {
		return fmt.Errorf("secret %s: %w", v.SecretName, err)
	}
	mode := os.FileMode(0o644)
	if v.DefaultMode != nil {
		mode = os.FileMode(*v.DefaultMode) & 0o777
	}
	items := v.Items
	if len(items) == 0 {
		for k := range sec.Data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		b, ok := sec.Data[it.Key]
		if !ok {
			return fmt.Errorf("secret %s has no key %q", v.SecretName, it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = os.FileMode(*it.Mode) & 0o777
		}
		if err := writeFile(dir, it.Path, b); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(dir, it.Path), m); err != nil {
			return err
		}
	}
	return nil
}

// chownTree gives a volume's directory and files to group gid.
func chownTree(dir string, gid int) {
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil {
			os.Lchown(p, -1, gid)
		}
		return nil
	})
}

// token asks the API server for the pod's service-account token, bound to
// the pod, as the kubelet does for a projected token.
func (im *Images) token(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, dir string) error {
	if im.Client == nil {
		if im.Token == nil {
			return errors.New("no API server and no token source")
		}
		tok, err := im.Token(pod, src.Audience)
		if err != nil {
			return err
		}
		return writeFile(dir, src.Path, []byte(tok))
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := im.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("TokenRequest for %s/%s: %w", pod.Namespace, sa, err)
	}
	return writeFile(dir, src.Path, []byte(tr.Status.Token))
}

// configMap writes a ConfigMap's keys (or the listed items) as files.
func (im *Images) configMap(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool, dir string) error {
	var cm *corev1.ConfigMap
	if im.Client == nil {
		data, found := map[string]string(nil), false
		if im.ConfigMap != nil {
			data, found = im.ConfigMap(ns, name)
		}
		if !found {
			if optional != nil && *optional {
				return nil
			}
			return fmt.Errorf("configMap %s: not found", name)
		}
		cm = &corev1.ConfigMap{Data: data}
	} else {
		var err error
		cm, err = im.Client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil
		}
		if err != nil {
			return fmt.Errorf("configMap %s: %w", name, err)
		}
	}
	if len(items) == 0 {
		for k := range cm.Data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		v, ok := cm.Data[it.Key]
		if !ok {
			return fmt.Errorf("configMap %s has no key %q", name, it.Key)
		}
		if err := writeFile(dir, it.Path, []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// downwardAPI writes the pod's fields as files (the service-account
// volume the API server adds to every pod carries the namespace so).
func downwardAPI(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, dir string) error {
	for _, it := range items {
		if it.FieldRef == nil {
			return fmt.Errorf("downwardAPI %s: only fieldRef is supported by the e2e node runner", it.Path)
		}
		v, err := fieldValue(pod, it.FieldRef.FieldPath, netip.Addr{}, netip.Addr{})
		if err != nil {
			return fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		if err := writeFile(dir, it.Path, []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(dir, rel string, b []byte) error {
	if rel == "" || filepath.IsAbs(rel) || strings.Contains(rel, "..") {
		return fmt.Errorf("path %q must be relative and stay inside the volume", rel)
	}
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
}

// containerEnv resolves a container's env as the kubelet does for the
// fields zmesh's manifests use: literal values and downward-API fieldRefs.
// The process starts with nothing else (no env of the runner leaks in),
// except PATH.
func containerEnv(pod *corev1.Pod, c *corev1.Container, podIP, hostIP netip.Addr) ([]string, error) {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + pod.Name}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				return nil, fmt.Errorf("env %s: only fieldRef is supported by the e2e node runner", e.Name)
			}
			var err error
			if v, err = fieldValue(pod, e.ValueFrom.FieldRef.FieldPath, podIP, hostIP); err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

func fieldValue(pod *corev1.Pod, field string, podIP, hostIP netip.Addr) (string, error) {
	switch field {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return podIP.String(), nil
	case "status.hostIP":
		return hostIP.String(), nil
	}
	for _, kind := range []struct {
		prefix string
		m      map[string]string
	}{{"metadata.labels", pod.Labels}, {"metadata.annotations", pod.Annotations}} {
		if rest, ok := strings.CutPrefix(field, kind.prefix+"['"); ok {
			if key, ok := strings.CutSuffix(rest, "']"); ok {
				return kind.m[key], nil
			}
		}
	}
	return "", fmt.Errorf("fieldPath %q is not supported by the e2e node runner", field)
}

// probeReady runs the container's HTTP readiness probe once, from the
// node's host namespace as the kubelet does. A container without a
// readiness probe is ready once started.
func probeReady(ctx context.Context, host *netenv.NS, c *corev1.Container, podIP netip.Addr) bool {
	p := c.ReadinessProbe
	if p == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if p.TCPSocket != nil {
		port, ok := containerPort(c, p.TCPSocket.Port.String())
		if !ok {
			return false
		}
		conn, err := host.Dial(ctx, "tcp", netip.AddrPortFrom(podIP, port).String())
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	if p.HTTPGet == nil {
		// exec probes: not used by zmesh's chart.
		return false
	}
	port, ok := containerPort(c, p.HTTPGet.Port.String())
	if !ok {
		return false
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return host.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(podIP, port).String()+p.HTTPGet.Path, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "kube-probe/1.36")
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// containerPort resolves a probe's port (a number or a container port's
// name).
func containerPort(c *corev1.Container, port string) (uint16, bool) {
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		return uint16(n), true
	}
	for _, p := range c.Ports {
		if p.Name == port {
			return uint16(p.ContainerPort), true
		}
	}
	return 0, false
}

// probePeriod is the readiness probe's period (the kubelet's default 10 s
// when unset).
func probePeriod(c *corev1.Container) time.Duration {
	if c.ReadinessProbe == nil || c.ReadinessProbe.PeriodSeconds == 0 {
		return 10 * time.Second
	}
	return time.Duration(c.ReadinessProbe.PeriodSeconds) * time.Second
}
