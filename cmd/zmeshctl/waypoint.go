package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// The names istiod and istioctl use for waypoints.
const (
	waypointClass       = "istio-waypoint"
	labelWaypointFor    = "istio.io/waypoint-for"
	labelUseWaypoint    = "istio.io/use-waypoint"
	labelRevision       = "istio.io/rev"
	labelDataplaneMode  = "istio.io/dataplane-mode"
	defaultWaypointName = "waypoint"
	fieldManager        = "zmeshctl"
)

var waypointFor = []string{"all", "none", "service", "workload"}

// waypointOptions are the flags of the waypoint commands.
type waypointOptions struct {
	name, forTraffic, revision string
	enroll, overwrite, wait    bool
	all, allNamespaces         bool
	timeout                    time.Duration
}

const waypointHelp = `
Manages the waypoints of a namespace: Gateways of class istio-waypoint
with one listener "mesh" on port 15008 (HBONE), as istioctl writes them.
zmeshd deploys each and sets its Programmed condition once it runs.

A namespace, service or pod uses a waypoint when labelled
istio.io/use-waypoint=<name> (apply --enroll-namespace labels the
namespace); the waypoint's istio.io/waypoint-for label (--for) says which
traffic it takes: service (the default when unset), workload, all, none.`

func (c *cli) waypointCommand() *cobra.Command {
	var o waypointOptions
	group := &cobra.Command{
		Use:   "waypoint",
		Short: "apply, list, inspect and delete waypoints",
		Long:  help(waypointHelp),
	}
	group.PersistentFlags().StringVar(&o.name, "name", defaultWaypointName, "name of the waypoint")

	generate := &cobra.Command{
		Use:   "generate",
		Short: "print a waypoint's Gateway as YAML",
		Example: `  zmeshctl waypoint generate -n default --for service
  zmeshctl waypoint generate --name reviews-wp | kubectl apply -f -`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns := ""
			if c.kube.namespaceGiven() {
				ns = c.kube.namespace
			}
			gw, err := o.gateway(ns)
			if err != nil {
				return err
			}
			b, err := gatewayYAML(gw)
			if err != nil {
				return err
			}
			_, err = c.stdout.Write(b)
			return err
		},
	}
	generate.Flags().StringVar(&o.forTraffic, "for", "", "the traffic the waypoint takes: "+strings.Join(waypointFor, ", ")+" (unset: zmeshd's default, service)")
	generate.Flags().StringVarP(&o.revision, "revision", "r", "", "the revision label of the waypoint")

	apply := &cobra.Command{
		Use:   "apply",
		Short: "create or update a waypoint (server-side apply)",
		Example: `  zmeshctl waypoint apply -n default --enroll-namespace --wait
  zmeshctl waypoint apply -n default --name reviews-wp --for workload`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.waypointApply(cmd.Context(), &o)
		},
	}
	apply.Flags().StringVar(&o.forTraffic, "for", "", "the traffic the waypoint takes: "+strings.Join(waypointFor, ", ")+" (unset: zmeshd's default, service)")
	apply.Flags().StringVarP(&o.revision, "revision", "r", "", "the revision label of the waypoint")
	apply.Flags().BoolVar(&o.enroll, "enroll-namespace", false, "label the namespace istio.io/use-waypoint=<name>")
	apply.Flags().BoolVar(&o.overwrite, "overwrite", false, "with --enroll-namespace, replace the namespace's current waypoint")
	apply.Flags().BoolVarP(&o.wait, "wait", "w", false, "wait until the waypoint is Programmed")
	apply.Flags().DurationVar(&o.timeout, "waypoint-timeout", 90*time.Second, "how long --wait waits")

	list := &cobra.Command{
		Use:   "list",
		Short: "list the waypoints of a namespace",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.waypointList(cmd.Context(), &o)
		},
	}
	list.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list the waypoints of every namespace")

	status := &cobra.Command{
		Use:   "status",
		Short: "show the Programmed condition of a namespace's waypoints (--name: of one)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			named := cmd.Flags().Changed("name")
			return c.waypointStatus(cmd.Context(), &o, named)
		},
	}

	del := &cobra.Command{
		Use:   "delete [NAME...]",
		Short: "delete waypoints by name, or all of a namespace with --all",
		Example: `  zmeshctl waypoint delete waypoint -n default
  zmeshctl waypoint delete --all -n default`,
		RunE: func(cmd *cobra.Command, names []string) error {
			switch {
			case o.all && len(names) > 0:
				return usagef("give waypoint names or --all, not both")
			case !o.all && len(names) == 0:
				return usagef("want waypoint names, or --all")
			}
			return c.waypointDelete(cmd.Context(), names)
		},
	}
	del.Flags().BoolVar(&o.all, "all", false, "delete every waypoint of the namespace")

	group.AddCommand(apply, generate, list, status, del)
	return group
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// gateway is the waypoint's Gateway as istioctl writes it; namespace ""
// leaves it out (generate without -n).
func (o *waypointOptions) gateway(namespace string) (*gatewayv1.Gateway, error) {
	name := cmp.Or(o.name, defaultWaypointName)
	if name == "none" {
		return nil, usagef("--name none: \"none\" is reserved (istio.io/use-waypoint=none opts out of waypoints)")
	}
	gw := &gatewayv1.Gateway{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: waypointClass,
			Listeners: []gatewayv1.Listener{{
				Name:     "mesh",
				Port:     15008,
				Protocol: "HBONE",
			}},
		},
	}
	// Unset --for leaves the label out, so zmeshd's default applies.
	if o.forTraffic != "" {
		if !slices.Contains(waypointFor, o.forTraffic) {
			return nil, usagef("--for %q: want one of %s", o.forTraffic, strings.Join(waypointFor, ", "))
		}
		metav1.SetMetaDataLabel(&gw.ObjectMeta, labelWaypointFor, o.forTraffic)
	}
	if o.revision != "" {
		metav1.SetMetaDataLabel(&gw.ObjectMeta, labelRevision, o.revision)
	}
	return gw, nil
}

// gatewayYAML is the Gateway as YAML without the empty status and
// creation time a marshalled object carries.
func gatewayYAML(gw *gatewayv1.Gateway) ([]byte, error) {
	b, err := yaml.Marshal(gw)
	if err != nil {
		return nil, fmt.Errorf("encode gateway: %w", err)
	}
	s := strings.ReplaceAll(string(b), "  creationTimestamp: null\n", "")
	s = strings.ReplaceAll(s, "status: {}\n", "")
	return []byte(s), nil
}

func (c *cli) waypointApply(ctx context.Context, o *waypointOptions) error {
	gw, err := o.gateway("")
	if err != nil {
		return err
	}
	k, err := c.kube.clients()
	if err != nil {
		return err
	}
	gw.Namespace = k.namespace
	if o.enroll {
		ns, err := k.kube.CoreV1().Namespaces().Get(ctx, k.namespace, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("namespace %s: %w", k.namespace, err)
		}
		if cur := ns.Labels[labelUseWaypoint]; cur != "" && cur != gw.Name && !o.overwrite {
			return fmt.Errorf("namespace %s already uses waypoint %q (label %s); add --overwrite to replace it", k.namespace, cur, labelUseWaypoint)
		}
		if ns.Labels[labelDataplaneMode] != "ambient" {
			fmt.Fprintf(c.stderr, "warning: namespace %s is not in the ambient mesh; consider: kubectl label namespace %s %s=ambient\n", k.namespace, k.namespace, labelDataplaneMode)
		}
	}
	body, err := gatewayYAML(gw)
	if err != nil {
		return err
	}
	_, err = k.gateway.GatewayV1().Gateways(k.namespace).Patch(ctx, gw.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: fieldManager})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("apply waypoint %s/%s: %w (are the Gateway API CRDs installed?)", k.namespace, gw.Name, err)
	}
	if err != nil {
		return fmt.Errorf("apply waypoint %s/%s: %w", k.namespace, gw.Name, err)
	}
	fmt.Fprintf(c.stdout, "waypoint %s/%s applied\n", k.namespace, gw.Name)
	if o.wait {
		if err := waitProgrammed(ctx, k, gw.Name, o.timeout); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "waypoint %s/%s is ready\n", k.namespace, gw.Name)
	}
	if o.enroll {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, labelUseWaypoint, gw.Name)
		if _, err := k.kube.CoreV1().Namespaces().Patch(ctx, k.namespace, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("label namespace %s %s=%s: %w", k.namespace, labelUseWaypoint, gw.Name, err)
		}
		fmt.Fprintf(c.stdout, "namespace %s labeled with \"%s: %s\"\n", k.namespace, labelUseWaypoint, gw.Name)
	}
	return nil
}

// waitInterval is how often --wait reads the Gateway.
const waitInterval = time.Second

// waitProgrammed polls the Gateway until its Programmed condition is True.
func waitProgrammed(ctx context.Context, k *clients, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(waitInterval)
	defer t.Stop()
	var last string
	for {
		gw, err := k.gateway.GatewayV1().Gateways(k.namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			cond := programmed(gw)
			if cond.Status == metav1.ConditionTrue {
				return nil
			}
			last = fmt.Sprintf("Programmed=%s %s %s", cond.Status, cond.Reason, cond.Message)
		case ctx.Err() == nil:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("waypoint %s/%s not programmed within %s (last: %s)", k.namespace, name, timeout, strings.TrimSpace(last))
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// programmed is the Gateway's Programmed condition, Unknown when absent.
func programmed(gw *gatewayv1.Gateway) metav1.Condition {
	if c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
		return *c
	}
	return metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionUnknown}
}

// waypoints lists the istio-waypoint Gateways of namespace ("" = all),
// sorted by namespace and name.
func waypoints(ctx context.Context, k *clients, namespace string) ([]gatewayv1.Gateway, error) {
	list, err := k.gateway.GatewayV1().Gateways(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	gws := slices.DeleteFunc(list.Items, func(gw gatewayv1.Gateway) bool { return gw.Spec.GatewayClassName != waypointClass })
	slices.SortFunc(gws, func(a, b gatewayv1.Gateway) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return gws, nil
}

func (c *cli) waypointList(ctx context.Context, o *waypointOptions) error {
	k, err := c.kube.clients()
	if err != nil {
		return err
	}
	ns := k.namespace
	if o.allNamespaces {
		ns = ""
	}
	gws, err := waypoints(ctx, k, ns)
	if err != nil {
		return err
	}
	if len(gws) == 0 {
		fmt.Fprintln(c.stdout, "No waypoints found.")
		return nil
	}
	return waypointTable(gws, o.allNamespaces).write(c.stdout)
}

// waypointTable is istioctl's waypoint list: NAME REVISION TRAFFIC TYPE
// PROGRAMMED, with NAMESPACE first for -A.
func waypointTable(gws []gatewayv1.Gateway, allNamespaces bool) table {
	t := table{header: []string{"NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"}}
	if allNamespaces {
		t.header = append([]string{"NAMESPACE"}, t.header...)
	}
	for _, gw := range gws {
		status := string(programmed(&gw).Status)
		if status == string(metav1.ConditionUnknown) {
			status = string(metav1.ConditionFalse)
		}
		row := []string{gw.Name, cmp.Or(gw.Labels[labelRevision], "default"), cmp.Or(gw.Labels[labelWaypointFor], "none"), status}
		if allNamespaces {
			row = append([]string{gw.Namespace}, row...)
		}
		t.rows = append(t.rows, row)
	}
	return t
}

func (c *cli) waypointStatus(ctx context.Context, o *waypointOptions, named bool) error {
	k, err := c.kube.clients()
	if err != nil {
		return err
	}
	gws, err := waypoints(ctx, k, k.namespace)
	if err != nil {
		return err
	}
	if named {
		gws = slices.DeleteFunc(gws, func(gw gatewayv1.Gateway) bool { return gw.Name != o.name })
		if len(gws) == 0 {
			return fmt.Errorf("no waypoint %s/%s", k.namespace, o.name)
		}
	}
	if len(gws) == 0 {
		fmt.Fprintln(c.stdout, "No waypoints found.")
		return nil
	}
	return statusTable(gws).write(c.stdout)
}

// statusTable is istioctl's waypoint status: each waypoint's Programmed
// condition.
func statusTable(gws []gatewayv1.Gateway) table {
	t := table{header: []string{"NAME", "STATUS", "TYPE", "REASON", "MESSAGE"}}
	for _, gw := range gws {
		cond := programmed(&gw)
		t.rows = append(t.rows, []string{gw.Name, string(cond.Status), cond.Type, cond.Reason, cond.Message})
	}
	return t
}

func (c *cli) waypointDelete(ctx context.Context, names []string) error {
	k, err := c.kube.clients()
	if err != nil {
		return err
	}
	gws, err := waypoints(ctx, k, k.namespace)
	if err != nil {
		return err
	}
	if len(names) == 0 { // --all
		for _, gw := range gws {
			names = append(names, gw.Name)
		}
		if len(names) == 0 {
			fmt.Fprintln(c.stdout, "No waypoints found.")
			return nil
		}
	}
	var errs []error
	for _, name := range names {
		if !slices.ContainsFunc(gws, func(gw gatewayv1.Gateway) bool { return gw.Name == name }) {
			// Not a waypoint: another class's Gateway of that name is left alone.
			errs = append(errs, fmt.Errorf("waypoint %s/%s not found", k.namespace, name))
			continue
		}
		err := k.gateway.GatewayV1().Gateways(k.namespace).Delete(ctx, name, metav1.DeleteOptions{})
		switch {
		case apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("waypoint %s/%s not found", k.namespace, name))
		case err != nil:
			errs = append(errs, fmt.Errorf("delete waypoint %s/%s: %w", k.namespace, name, err))
		default:
			fmt.Fprintf(c.stdout, "waypoint %s/%s deleted\n", k.namespace, name)
		}
	}
	return errors.Join(errs...)
}
