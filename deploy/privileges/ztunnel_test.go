package privileges

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/bpf"
	"github.com/zmesh/zmesh/deploy/render"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/ztunnel/inpod"
)

// childEnv turns the test binary into the ztunnel stand-in (see
// runAsZtunnel); its value is the capabilities it must hold.
const childEnv = "ZMESH_PRIVILEGES_CHILD"

func TestMain(m *testing.M) {
	if caps, ok := os.LookupEnv(childEnv); ok {
		if err := runAsZtunnel(caps); err != nil {
			fmt.Println("FAILED:", err)
			os.Exit(1)
		}
		fmt.Println("OK")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// capBits are the capabilities the chart may name, by number.
var capBits = map[string]uint{"NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21, "NET_BIND_SERVICE": 10, "BPF": 39, "SYS_PTRACE": 19}

// chartZtunnelCaps renders the chart and returns what its ztunnel
// container adds to an empty capability set.
func chartZtunnelCaps(t *testing.T) []string {
	t.Helper()
	ms, err := render.Render(render.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Kind != "DaemonSet" || m.Name != "ztunnel" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal([]byte(m.YAML), &ds); err != nil {
			t.Fatal(err)
		}
		sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
		if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Fatal("the chart's ztunnel does not drop ALL capabilities")
		}
		var caps []string
		for _, c := range sc.Capabilities.Add {
			caps = append(caps, string(c))
		}
		slices.Sort(caps)
		return caps
	}
	t.Fatal("the chart renders no ztunnel DaemonSet")
	return nil
}

// TestZtunnelCapabilities runs what ztunnel does with a pod (enter its
// namespace by descriptor, open a marked transparent listener, put it in
// the pod's SOCKMAP, add and remove a bypass entry, dial marked) as uid 0
// in a process whose bounding set holds only the chart's capabilities, as
// a container runtime starts it: it works. Then with each capability
// taken away in turn: it fails, so none of them is superfluous.
func TestZtunnelCapabilities(t *testing.T) {
	caps := chartZtunnelCaps(t)
	t.Logf("the chart gives ztunnel %v", caps)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed to start a process with a reduced bounding set: %v", err)
	}
	pod, err := netenv.NewNS("pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Close() })
	capture, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })

	run := func(caps []string) (string, error) {
		nsFD, err := unix.Dup(int(pod.Handle()))
		if err != nil {
			t.Fatal(err)
		}
		sockmap, bypass, err := capture.MapFDs()
		if err != nil {
			t.Fatal(err)
		}
		files := []*os.File{os.NewFile(uintptr(nsFD), "netns"), os.NewFile(uintptr(sockmap), "sockmap"), os.NewFile(uintptr(bypass), "bypass")}
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		set := "-all"
		for _, c := range caps {
			set += ",+" + strings.ToLower(c)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "setpriv", "--bounding-set", set, "--inh-caps", "-all", "--", os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(caps, ","))
		cmd.ExtraFiles = files // 3, 4, 5 in the child
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	if out, err := run(caps); err != nil || !strings.HasSuffix(out, "OK") {
		t.Fatalf("with %v: %v\n%s", caps, err, out)
	}
	t.Logf("with %v: ztunnel's pod sockets and maps work", caps)
	for _, drop := range caps {
		fewer := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop })
		out, err := run(fewer)
		if err == nil {
			t.Errorf("without %s it still works: the chart asks for more than ztunnel needs\n%s", drop, out)
			continue
		}
		t.Logf("without %s: %s", drop, out)
	}
}

// runAsZtunnel is the child: it checks that it holds exactly caps, then
// does with the pod's namespace (fd 3), SOCKMAP (fd 4) and bypass map
// (fd 5) what ztunnel does.
func runAsZtunnel(caps string) error {
	var want uint64
	for c := range strings.SplitSeq(caps, ",") {
		if c == "" {
			continue
		}
		bit, ok := capBits[c]
		if !ok {
			return fmt.Errorf("unknown capability %q", c)
		}
		want |= 1 << bit
	}
	if got, err := effectiveCaps(); err != nil {
		return err
	} else if got != want || os.Geteuid() != 0 {
		return fmt.Errorf("running as uid %d with capabilities %#x, want uid 0 with %#x", os.Geteuid(), got, want)
	}
	ns, err := inpod.Open(3)
	if err != nil {
		return fmt.Errorf("enter the pod's network namespace: %w", err)
	}
	defer ns.Close()
	ln, err := ns.Listen(netip.MustParseAddrPort("127.0.0.1:0"), inpod.ListenOptions{Transparent: true})
	if err != nil {
		return fmt.Errorf("open a marked transparent listener: %w", err)
	}
	defer ln.Close()
	maps, err := bpf.NewPodMaps(4, 5)
	if err != nil {
		return fmt.Errorf("adopt the pod's maps: %w", err)
	}
	defer maps.Close()
	if err := inpod.Steer(maps, bpf.Outbound, ln); err != nil {
		return fmt.Errorf("steer into the SOCKMAP: %w", err)
	}
	a, b := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:40000")
	if err := maps.AddBypass(a, b); err != nil {
		return fmt.Errorf("add a bypass entry: %w", err)
	}
	if err := maps.DeleteBypass(a, b); err != nil {
		return fmt.Errorf("delete a bypass entry: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		return fmt.Errorf("dial marked: %w", err)
	}
	c.Close()
	return nil
}

// effectiveCaps reads this process's effective capability set.
func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("CapEff:")); ok {
			return strconv.ParseUint(strings.TrimSpace(string(v)), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/self/status")
}
