package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func (c *cli) installCommand() *cobra.Command {
	var v valueFlags
	var wait, skipCRDs bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "install [-f values.yaml] [--set key=value]",
		Short: "Install or upgrade zmesh: render the chart built into zmeshctl and apply it",
		Long: `Renders the zmesh chart zmeshctl was built with (Helm's engine, the chart's values
overridden by -f files and --set values, as helm does) for the namespace -n
(default istio-system), and applies every object with server-side apply.
Run over an existing install it is an upgrade: changed objects are updated,
and objects the new values no longer render are deleted. CRDs are applied
first and never deleted by an upgrade. --wait waits until every Deployment
and DaemonSet has rolled out.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, _, err := c.installer()
			if err != nil {
				return err
			}
			objs, err := in.render(v, !skipCRDs)
			if err != nil {
				return err
			}
			fmt.Fprintf(in.out, "installing zmesh into namespace %s (%d objects)\n", in.ns, len(objs))
			if err := in.install(cmd.Context(), objs, timeout); err != nil {
				return err
			}
			if wait {
				if err := in.rollouts(cmd.Context(), objs, timeout); err != nil {
					return err
				}
			}
			fmt.Fprintf(c.stdout, "zmesh installed in namespace %s\n", in.ns)
			return nil
		},
	}
	v.register(cmd)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the Deployments and DaemonSets have rolled out")
	cmd.Flags().BoolVar(&skipCRDs, "skip-crds", false, "do not apply the Istio and Gateway API CRDs (already installed)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for CRDs and rollouts")
	return cmd
}

func (c *cli) uninstallCommand() *cobra.Command {
	var purge bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what zmeshctl install created",
		Long: `Deletes every object the last zmeshctl install into the namespace -n (default
istio-system) applied and that still carries its label, the namespace too
if install created it. The CRDs stay unless --purge is given: deleting a
CRD deletes every Istio or Gateway API object of its kind in the cluster.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, _, err := c.installer()
			if err != nil {
				return err
			}
			refs, ok, err := in.inventory(cmd.Context())
			if err != nil {
				return err
			}
			if !ok {
				// No record (an install interrupted before its end):
				// what the chart renders by default, still labelled.
				objs, err := in.render(valueFlags{}, true)
				if err != nil {
					return err
				}
				refs = append(refs, ref{APIVersion: "v1", Kind: "Namespace", Name: in.ns})
				for _, u := range objs {
					refs = append(refs, refOf(u))
				}
			}
			if err := in.uninstall(cmd.Context(), refs, purge, timeout); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "zmesh uninstalled from namespace %s\n", in.ns)
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "delete the CRDs too (and so every object of their kinds)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the objects to go")
	return cmd
}

func (c *cli) verifyInstallCommand() *cobra.Command {
	var v valueFlags
	cmd := &cobra.Command{
		Use:   "verify-install [-f values.yaml] [--set key=value]",
		Short: "Check that every object of the install exists and is ready",
		Long: `Renders the chart with the given values (those of the install) and checks each
object in the cluster: it exists, CRDs are established, Deployments have every
replica available, DaemonSets are ready on every node they should run on.
Prints a table; exits 1 naming what is missing or not ready.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, _, err := c.installer()
			if err != nil {
				return err
			}
			objs, err := in.render(v, true)
			if err != nil {
				return err
			}
			t := table{header: []string{"KIND", "NAMESPACE", "NAME", "STATUS"}}
			var bad []string
			for _, u := range objs {
				r := refOf(u)
				got, err := in.get(cmd.Context(), r)
				if err != nil {
					return err
				}
				state, ok := "missing", false
				if got != nil {
					ok, state = readiness(got)
				}
				if !ok {
					bad = append(bad, fmt.Sprintf("%s (%s)", r, state))
					state = "NOT READY: " + state
					if got == nil {
						state = "MISSING"
					}
				}
				t.rows = append(t.rows, []string{r.Kind, orNone(r.Namespace), r.Name, state})
			}
			if err := t.write(c.stdout); err != nil {
				return err
			}
			if len(bad) > 0 {
				return fmt.Errorf("%d of %d objects missing or not ready: %s", len(bad), len(objs), strings.Join(bad, "; "))
			}
			fmt.Fprintf(c.stdout, "✔ all %d objects of zmesh in namespace %s exist and are ready\n", len(objs), in.ns)
			return nil
		},
	}
	v.register(cmd)
	return cmd
}

// minKube is the oldest Kubernetes the chart is tested for: its CRDs'
// validation uses CEL rules and Gateway API ships a
// ValidatingAdmissionPolicy, GA in 1.30.
var minKube = [2]int{1, 30}

func (c *cli) precheckCommand() *cobra.Command {
	var v valueFlags
	cmd := &cobra.Command{
		Use:   "precheck [-f values.yaml] [--set key=value]",
		Short: "Check that the cluster can take a zmesh install",
		Long: `Checks, before zmeshctl install, what can be seen from the API server: the
Kubernetes version, CRDs that would clash with those of the chart (an existing
Istio's, or stored versions the chart no longer serves), a control plane or
ztunnel of another install, the permissions to create every object (as the
current user, with SelfSubjectAccessReview), and the nodes' kernel versions.
The kernel's BPF features (sk_lookup, SOCKMAP, BTF, a mounted bpffs) cannot be
checked from the API server: they are each node's. Exits 1 if a check fails.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, cl, err := c.installer()
			if err != nil {
				return err
			}
			objs, err := in.render(v, true)
			if err != nil {
				return err
			}
			p := &precheck{in: in, cl: cl, t: table{header: []string{"CHECK", "VERDICT", "DETAIL"}}}
			p.version()
			p.crds(cmd.Context(), objs)
			p.otherMesh(cmd.Context())
			p.permissions(cmd.Context(), objs)
			p.kernels(cmd.Context())
			if err := p.t.write(c.stdout); err != nil {
				return err
			}
			if p.failed > 0 {
				return fmt.Errorf("%d check(s) failed", p.failed)
			}
			return nil
		},
	}
	v.register(cmd)
	return cmd
}

type precheck struct {
	in     *installer
	cl     *clients
	t      table
	failed int
}

func (p *precheck) add(check, verdict, detail string) {
	if verdict == "FAIL" {
		p.failed++
	}
	p.t.rows = append(p.t.rows, []string{check, verdict, detail})
}

func (p *precheck) version() {
	v, err := p.in.disc.ServerVersion()
	if err != nil {
		p.add("kubernetes version", "FAIL", err.Error())
		return
	}
	major, _ := strconv.Atoi(strings.TrimRight(v.Major, "+"))
	minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	if major < minKube[0] || major == minKube[0] && minor < minKube[1] {
		p.add("kubernetes version", "FAIL", fmt.Sprintf("%s: zmesh needs %d.%d or newer", v.GitVersion, minKube[0], minKube[1]))
		return
	}
	p.add("kubernetes version", "OK", v.GitVersion)
}

// crds compares each CRD of the render with the cluster's: absent or ours
// is fine; another install's is taken over (server-side apply, forced),
// which is a warning; a version the cluster has stored objects in and the
// chart does not define would make the API server refuse the apply.
func (p *precheck) crds(ctx context.Context, objs []*unstructured.Unstructured) {
	var foreign []string
	bad := 0
	for _, u := range objs {
		if u.GroupVersionKind().GroupKind() != crdGK {
			continue
		}
		got, err := p.in.get(ctx, refOf(u))
		if err != nil {
			p.add("CRDs", "FAIL", "cannot read the cluster's CRDs: "+err.Error())
			return
		}
		if got == nil || p.in.owned(got) {
			continue
		}
		owner := got.GetLabels()["app.kubernetes.io/managed-by"]
		if owner == "" {
			owner = "another install"
		}
		foreign = append(foreign, fmt.Sprintf("%s (%s)", u.GetName(), owner))
		defined := map[string]bool{}
		versions, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
		for _, v := range versions {
			if m, ok := v.(map[string]any); ok {
				defined[fmt.Sprint(m["name"])] = true
			}
		}
		stored, _, _ := unstructured.NestedStringSlice(got.Object, "status", "storedVersions")
		for _, s := range stored {
			if !defined[s] {
				p.add("CRD "+u.GetName(), "FAIL", fmt.Sprintf("the cluster stores objects at version %s, which the chart's CRD does not define: migrate them first", s))
				bad++
			}
		}
	}
	switch {
	case len(foreign) > 0:
		p.add("CRDs", "WARN", fmt.Sprintf("%d exist from another install and will be taken over (same APIs; check versions match): %s", len(foreign), strings.Join(foreign, ", ")))
	case bad == 0:
		p.add("CRDs", "OK", "none installed by anyone else")
	}
}

// otherMesh looks for a control plane or node proxy of another install:
// two ztunnels on one node would fight over the CNI's socket, two control
// planes over status and the waypoints.
func (p *precheck) otherMesh(ctx context.Context) {
	apps := p.cl.kube.AppsV1()
	found := false
	ds, err := apps.DaemonSets("").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		p.add("other mesh", "FAIL", err.Error())
		return
	}
	for _, d := range ds.Items {
		if d.Labels[ownerLabel] != p.in.ns {
			p.add("other mesh", "FAIL", fmt.Sprintf("DaemonSet %s/%s runs a ztunnel of another install: uninstall it first", d.Namespace, d.Name))
			found = true
		}
	}
	deps, err := apps.Deployments("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		p.add("other mesh", "FAIL", err.Error())
		return
	}
	for _, d := range deps.Items {
		p.add("other mesh", "FAIL", fmt.Sprintf("Deployment %s/%s is an istiod: two control planes would both write status and sign certificates", d.Namespace, d.Name))
		found = true
	}
	if !found {
		p.add("other mesh", "OK", "no istiod, no other ztunnel")
	}
}

// permissions asks the API server whether the current user may create
// and patch (server-side apply) each object of the render.
func (p *precheck) permissions(ctx context.Context, objs []*unstructured.Unstructured) {
	var denied []string
	seen := map[string]bool{}
	for _, u := range objs {
		r := refOf(u)
		gvk := r.gvk()
		m, err := p.in.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if noMatch(err) {
			continue // a kind whose CRD the install itself creates
		}
		if err != nil {
			p.add("permissions", "FAIL", err.Error())
			return
		}
		ns := r.Namespace
		if m.Scope.Name() == meta.RESTScopeNameNamespace && ns == "" {
			ns = p.in.ns
		}
		for _, verb := range []string{"create", "patch"} {
			key := verb + " " + m.Resource.Resource + "." + m.Resource.Group + " " + ns
			if seen[key] {
				continue
			}
			seen[key] = true
			rev, err := p.cl.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
				Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
					Verb: verb, Group: m.Resource.Group, Resource: m.Resource.Resource, Namespace: ns}},
			}, metav1.CreateOptions{})
			if err != nil {
				p.add("permissions", "FAIL", err.Error())
				return
			}
			if !rev.Status.Allowed {
				where := "cluster-wide"
				if ns != "" {
					where = "in " + ns
				}
				denied = append(denied, fmt.Sprintf("%s %s %s", verb, m.Resource.GroupResource(), where))
			}
		}
	}
	if len(denied) > 0 {
		p.add("permissions", "FAIL", "not allowed: "+strings.Join(denied, "; "))
		return
	}
	p.add("permissions", "OK", fmt.Sprintf("may create and patch all %d kinds of object", len(kindsOf(objs))))
}

func kindsOf(objs []*unstructured.Unstructured) map[string]bool {
	kinds := map[string]bool{}
	for _, u := range objs {
		kinds[u.GetKind()] = true
	}
	return kinds
}

// kernels reports the nodes' kernel versions: capture needs sk_lookup
// (Linux 5.9). The features a kernel was built with cannot be seen from
// the API server.
func (p *precheck) kernels(ctx context.Context) {
	nodes, err := p.cl.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		p.add("node kernels", "FAIL", err.Error())
		return
	}
	var old []string
	for _, n := range nodes.Items {
		k := n.Status.NodeInfo.KernelVersion
		var major, minor int
		if _, err := fmt.Sscanf(k, "%d.%d", &major, &minor); err == nil && (major < 5 || major == 5 && minor < 9) {
			old = append(old, n.Name+" ("+k+")")
		}
	}
	switch {
	case len(old) > 0:
		p.add("node kernels", "FAIL", "older than Linux 5.9 (no sk_lookup): "+strings.Join(old, ", "))
	case len(nodes.Items) == 0:
		p.add("node kernels", "WARN", "no nodes")
	default:
		p.add("node kernels", "OK", fmt.Sprintf("%d node(s) on Linux 5.9 or newer", len(nodes.Items)))
	}
	p.add("node BPF features", "UNKNOWN", "sk_lookup, SOCKMAP, BTF and a mounted bpffs are each node's kernel's and cannot be checked from the API server; the CNI agent needs them on every node")
}
