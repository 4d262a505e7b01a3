package images

import "path"

// BinDir is where every image keeps its binaries. It is on the image's PATH,
// so a container whose command is a bare binary name (the waypoint
// controller runs its Deployments with the command "waypoint") finds it.
const BinDir = "/usr/local/bin"

// Path is the PATH of every image: Docker's default, so a bare command
// name resolves the way it does in any other image.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// NonRoot is the user and group the images run as unless the binary needs
// root. Numeric, so a pod's runAsNonRoot can be checked against the image
// with no /etc/passwd in it.
const NonRoot = "65532:65532"

// Root is the user of images whose binary needs root (see Specs).
const Root = "0:0"

// CABundle is where Go's crypto/x509 looks first for the system's roots on
// Linux.
const CABundle = "/etc/ssl/certs/ca-certificates.crt"

// Spec describes one image.
type Spec struct {
	// Name of the image (the last element of its repository).
	Name string
	// Binaries are the binaries the image carries, by name, all in BinDir;
	// the first is the entrypoint.
	Binaries []string
	// User the container runs as, as uid:gid.
	User string
	// CABundle is true when the binary makes TLS connections to servers
	// outside the mesh, whose certificates chain to public roots.
	CABundle bool
}

// Entrypoint is the image's entrypoint: its first binary's absolute path.
func (s Spec) Entrypoint() []string {
	return []string{path.Join(BinDir, s.Binaries[0])}
}

// Specs are zmesh's images. Only what a binary needs is in its image: the
// binaries are static, log to stderr and read the time zone nowhere (no
// tzdata). The images have no writable directory: what a binary keeps
// (zmeshd's --ca-dir, ztunnel's --state-dir) lives on volumes the pod
// mounts, so that it outlives the container.
//
// ztunnel and zmesh-cni-agent run as root: ztunnel enters every pod's
// network namespace (setns needs CAP_SYS_ADMIN) and opens transparent,
// marked sockets there (CAP_NET_ADMIN, CAP_NET_RAW); the agent writes the
// host's CNI bin and conf directories, loads and pins eBPF programs and
// serves ZDS and CNI sockets that only root may use. Kubernetes gives added
// capabilities to a non-root user only as bounding capabilities, not
// effective ones, so these two need uid 0, with the pod's securityContext
// limiting them to the capabilities they use. The others need no privilege
// and run as NonRoot; their ports are all above 1024.
func Specs() []Spec {
	return []Spec{
		// zmeshd fetches JWT issuers' key sets over HTTPS to push them
		// inline to waypoints: those servers chain to public roots.
		{Name: "zmeshd", Binaries: []string{"zmeshd"}, User: NonRoot, CABundle: true},
		{Name: "ztunnel", Binaries: []string{"ztunnel"}, User: Root},
		// The agent installs the plugin from next to its own executable
		// (its --plugin-binary default), so both share BinDir.
		{Name: "zmesh-cni-agent", Binaries: []string{"zmesh-cni-agent", "zmesh-cni"}, User: Root},
		{Name: "waypoint", Binaries: []string{"waypoint"}, User: NonRoot},
		{Name: "zmeshctl", Binaries: []string{"zmeshctl"}, User: NonRoot},
	}
}
