package render

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestStaticManifestUpToDate renders deploy/manifests/zmesh.yaml afresh:
// the committed file is the chart's, byte for byte.
func TestStaticManifestUpToDate(t *testing.T) {
	want, err := Static()
	if err != nil {
		t.Fatal(err)
	}
	// Twice: the render must not depend on map order or the clock.
	again, err := Static()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, again) {
		t.Fatal("two renders of the chart differ")
	}
	got, err := os.ReadFile(filepath.Join("..", "manifests", "zmesh.yaml"))
	if err != nil {
		t.Fatalf("%v: run make generate-manifests", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("deploy/manifests/zmesh.yaml differs from the chart's render: run make generate-manifests\n%s", diff(string(want), string(got)))
	}
}

// readmeRow matches a row of a Markdown table: | a | b | ... |.
var readmeRow = regexp.MustCompile(`^\|(.*)\|\s*$`)

// part is what the chart's README allows one workload.
type part struct {
	root, privileged, hostNetwork, hostPID bool
	caps                                   []string
}

// allowances reads the chart README's tables "Where each part runs, and
// with what privileges" and "Capabilities".
func allowances(t *testing.T) map[string]*part {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ChartDir(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	parts := map[string]*part{}
	section := ""
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "#") {
			section = strings.TrimSpace(strings.TrimLeft(line, "#"))
			continue
		}
		m := readmeRow.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(m[1], "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch section {
		case "Where each part runs, and with what privileges":
			if len(cells) != 5 || cells[0] == "part" {
				continue
			}
			parts[cells[0]] = &part{
				root:        cells[3] == "0",
				privileged:  cells[4] == "privileged",
				hostNetwork: strings.Contains(cells[2], "`hostNetwork`") && !strings.Contains(cells[2], "not `hostNetwork`"),
				hostPID:     strings.Contains(cells[2], "`hostPID`"),
			}
		case "Capabilities":
			if len(cells) != 3 || cells[0] == "workload" {
				continue
			}
			p := parts[cells[0]]
			if p == nil {
				t.Fatalf("README: capability %s for %s, which the table of parts does not list", cells[1], cells[0])
			}
			p.caps = append(p.caps, strings.Trim(cells[1], "`"))
		}
	}
	if len(parts) == 0 {
		t.Fatal("README: no table of parts")
	}
	return parts
}

// TestWorkloadPrivileges checks every workload the chart renders, with the
// defaults and with other values, against what the chart's README allows
// it: non-root unless the README says uid 0, only the capabilities the
// README names (every other one dropped), privileged, hostNetwork and
// hostPID only where the README says so, and a read-only root filesystem.
func TestWorkloadPrivileges(t *testing.T) {
	allowed := allowances(t)
	for _, p := range allowed {
		slices.Sort(p.caps)
	}
	for name, vals := range map[string]map[string]any{
		"defaults":     nil,
		"generated CA": {"zmeshd": map[string]any{"replicas": 1, "caSecretName": ""}},
	} {
		ms, err := Render(Options{Values: vals})
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, m := range ms {
			var spec *corev1.PodSpec
			switch m.Kind {
			case "Deployment":
				var d appsv1.Deployment
				if err := yaml.UnmarshalStrict([]byte(m.YAML), &d); err != nil {
					t.Fatalf("%s %s: %v", m.Kind, m.Name, err)
				}
				spec = &d.Spec.Template.Spec
			case "DaemonSet":
				var d appsv1.DaemonSet
				if err := yaml.UnmarshalStrict([]byte(m.YAML), &d); err != nil {
					t.Fatalf("%s %s: %v", m.Kind, m.Name, err)
				}
				spec = &d.Spec.Template.Spec
			case "Pod", "StatefulSet", "Job", "CronJob", "ReplicaSet":
				t.Fatalf("%s %s: a workload kind this test does not check", m.Kind, m.Name)
			default:
				continue
			}
			seen++
			p := allowed[m.Name]
			if p == nil {
				t.Errorf("%s: %s %s is not in the README's table of parts", name, m.Kind, m.Name)
				continue
			}
			for _, problem := range checkPod(spec, p) {
				t.Errorf("%s: %s %s: %s", name, m.Kind, m.Name, problem)
			}
		}
		if seen == 0 {
			t.Fatalf("%s: no workload rendered", name)
		}
		t.Logf("%s: %d workloads checked", name, seen)
	}
}

// checkPod lists how spec exceeds p.
func checkPod(spec *corev1.PodSpec, p *part) []string {
	var out []string
	if spec.HostNetwork && !p.hostNetwork {
		out = append(out, "hostNetwork")
	}
	if spec.HostPID && !p.hostPID {
		out = append(out, "hostPID")
	}
	if spec.HostIPC {
		out = append(out, "hostIPC")
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			out = append(out, c.Name+": no securityContext")
			continue
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			out = append(out, c.Name+": writable root filesystem")
		}
		runAsNonRoot := cmpOr(sc.RunAsNonRoot, psc.RunAsNonRoot)
		uid := cmpOr(sc.RunAsUser, psc.RunAsUser)
		if !p.root && (runAsNonRoot == nil || !*runAsNonRoot || uid == nil || *uid == 0) {
			out = append(out, c.Name+": may run as root (runAsNonRoot and a non-zero runAsUser wanted)")
		}
		if sc.Privileged != nil && *sc.Privileged {
			if !p.privileged {
				out = append(out, c.Name+": privileged")
			}
			continue
		}
		if p.privileged {
			continue // allowed more than it asks for
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			out = append(out, c.Name+": privilege escalation not turned off")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			out = append(out, c.Name+": does not drop ALL capabilities")
			continue
		}
		var add []string
		for _, c := range sc.Capabilities.Add {
			add = append(add, strings.TrimPrefix(string(c), "CAP_"))
		}
		slices.Sort(add)
		if !slices.Equal(add, p.caps) {
			out = append(out, c.Name+": adds capabilities "+strings.Join(add, ",")+", the README lists "+strings.Join(p.caps, ","))
		}
		seccomp := cmpOr(sc.SeccompProfile, psc.SeccompProfile)
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			out = append(out, c.Name+": no RuntimeDefault seccomp profile")
		}
	}
	return out
}

// cmpOr returns the first non-nil pointer.
func cmpOr[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

func TestMain(m *testing.M) {
	// Helm's loader logs, at info, the link crds -> deploy/crds.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
