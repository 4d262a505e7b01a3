package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/deploy/render"
)

// An install is the chart rendered with the user's values and applied with
// server-side apply under one field manager. Every object it applies
// carries ownerLabel (valued with the release namespace), and the list of
// what it applied is kept in the ConfigMap inventoryName of that
// namespace: a later install with other values (an upgrade) deletes what
// the new render no longer contains, and uninstall deletes what the list
// names - in both cases only objects that still carry the label, so an
// edited list cannot make zmeshctl delete objects it did not create.
const (
	ownerLabel     = "install.zmesh.io/owner"
	installManager = "zmeshctl-install"
	inventoryName  = "zmesh-install"
	inventoryKey   = "objects"
	defaultInstall = "istio-system"
)

var (
	crdGK = schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}
	nsGK  = schema.GroupKind{Kind: "Namespace"}
)

// ref names one object of an install.
type ref struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

func (r ref) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

func (r ref) gvk() schema.GroupVersionKind {
	return schema.FromAPIVersionAndKind(r.APIVersion, r.Kind)
}

func refOf(u *unstructured.Unstructured) ref {
	return ref{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
}

// valueFlags are helm's -f and --set, shared by the commands that render.
type valueFlags struct {
	files, sets []string
}

func (v *valueFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&v.files, "values", "f", nil, "a values file of the chart (repeatable; later ones win)")
	cmd.Flags().StringArrayVar(&v.sets, "set", nil, "a value, e.g. zmeshd.replicas=3 (repeatable; applied after -f)")
}

// installer talks to one cluster about one install.
type installer struct {
	ns     string
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	disc   discovery.DiscoveryInterface
	out    io.Writer
	poll   time.Duration
}

func (c *cli) installer() (*installer, *clients, error) {
	cl, err := c.kube.clients()
	if err != nil {
		return nil, nil, err
	}
	ns := defaultInstall
	if c.kube.namespaceGiven() {
		ns = cl.namespace
	}
	dyn, err := dynamic.NewForConfig(cl.config)
	if err != nil {
		return nil, nil, err
	}
	disc := cl.kube.Discovery()
	return &installer{
		ns: ns, dyn: dyn, disc: disc, out: c.stderr, poll: 500 * time.Millisecond,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
	}, cl, nil
}

// render renders the chart for the install's namespace and returns its
// objects, labelled as the install's.
func (in *installer) render(v valueFlags, crds bool) ([]*unstructured.Unstructured, error) {
	vals, err := render.ParseValues(v.files, v.sets)
	if err != nil {
		return nil, err
	}
	ms, err := render.Render(render.Options{Namespace: in.ns, Values: vals, IncludeCRDs: crds})
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, m := range ms {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(m.YAML), &obj); err != nil {
			return nil, fmt.Errorf("%s: %w", m.Source, err)
		}
		u := &unstructured.Unstructured{Object: obj}
		labels := u.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[ownerLabel] = in.ns
		u.SetLabels(labels)
		objs = append(objs, u)
	}
	return objs, nil
}

// resource is the client for r's kind (and namespace if namespaced).
func (in *installer) resource(r ref) (dynamic.ResourceInterface, error) {
	gvk := r.gvk()
	m, err := in.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: the cluster does not serve this kind: %w", r, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := r.Namespace
		if ns == "" {
			ns = in.ns
		}
		return in.dyn.Resource(m.Resource).Namespace(ns), nil
	}
	return in.dyn.Resource(m.Resource), nil
}

// apply server-side applies u as zmeshctl, taking over fields another
// manager set (an earlier Istio install of the same CRDs, kubectl edits).
func (in *installer) apply(ctx context.Context, u *unstructured.Unstructured) error {
	ri, err := in.resource(refOf(u))
	if err != nil {
		return err
	}
	data, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	force := true
	if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: installManager, Force: &force}); err != nil {
		return fmt.Errorf("apply %s: %w", refOf(u), err)
	}
	return nil
}

// get returns the object r, nil if it does not exist.
func (in *installer) get(ctx context.Context, r ref) (*unstructured.Unstructured, error) {
	ri, err := in.resource(r)
	if noMatch(err) {
		return nil, nil // the kind is not served, so no such object exists
	}
	if err != nil {
		return nil, err
	}
	u, err := ri.Get(ctx, r.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return u, err
}

// inventory reads the refs of the last install; ok is false when there
// is none.
func (in *installer) inventory(ctx context.Context) (refs []ref, ok bool, err error) {
	u, err := in.get(ctx, ref{APIVersion: "v1", Kind: "ConfigMap", Namespace: in.ns, Name: inventoryName})
	if err != nil || u == nil {
		return nil, false, err
	}
	data, _, _ := unstructured.NestedString(u.Object, "data", inventoryKey)
	if err := json.Unmarshal([]byte(data), &refs); err != nil {
		return nil, false, fmt.Errorf("ConfigMap %s/%s: %s: %w", in.ns, inventoryName, inventoryKey, err)
	}
	return refs, true, nil
}

func (in *installer) writeInventory(ctx context.Context, refs []ref) error {
	data, err := json.Marshal(refs)
	if err != nil {
		return err
	}
	cm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": inventoryName, "namespace": in.ns, "labels": map[string]any{ownerLabel: in.ns}},
		"data":     map[string]any{inventoryKey: string(data)},
	}}
	return in.apply(ctx, cm)
}

// owned reports whether u was created by this install.
func (in *installer) owned(u *unstructured.Unstructured) bool {
	return u != nil && u.GetLabels()[ownerLabel] == in.ns
}

// remove deletes r if it is this install's, and reports whether it did.
func (in *installer) remove(ctx context.Context, r ref) (bool, error) {
	u, err := in.get(ctx, r)
	if err != nil || !in.owned(u) {
		return false, err
	}
	ri, err := in.resource(r)
	if err != nil {
		return false, err
	}
	bg := metav1.DeletePropagationBackground
	err = ri.Delete(ctx, r.Name, metav1.DeleteOptions{PropagationPolicy: &bg, Preconditions: &metav1.Preconditions{UID: ptr(u.GetUID())}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete %s: %w", r, err)
	}
	return true, nil
}

// noMatch reports whether err says the cluster serves no such kind.
func noMatch(err error) bool {
	var kind *meta.NoKindMatchError
	var res *meta.NoResourceMatchError
	return errors.As(err, &kind) || errors.As(err, &res)
}

func ptr[T any](v T) *T { return &v }

// waitFor polls check until it reports done, ctx ends or timeout passes;
// on timeout the error says what check last reported.
func (in *installer) waitFor(ctx context.Context, timeout time.Duration, what string, check func() (done bool, state string, err error)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		done, state, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if state != last && state != "" {
			fmt.Fprintf(in.out, "  waiting for %s: %s\n", what, state)
			last = state
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %s", timeout, what, state)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(in.poll):
		}
	}
}

// install applies objs and prunes what the last install had and objs
// lack. CRDs go first and are waited for (Established) before objects of
// their kinds; a namespace zmeshctl creates is its own.
func (in *installer) install(ctx context.Context, objs []*unstructured.Unstructured, timeout time.Duration) error {
	previous, _, err := in.inventory(ctx)
	if err != nil {
		return err
	}
	var refs []ref
	nsRef := ref{APIVersion: "v1", Kind: "Namespace", Name: in.ns}
	existing, err := in.get(ctx, nsRef)
	if err != nil {
		return err
	}
	if existing == nil || in.owned(existing) {
		ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": in.ns, "labels": map[string]any{ownerLabel: in.ns}}}}
		if err := in.apply(ctx, ns); err != nil {
			return err
		}
		refs = append(refs, nsRef)
		if existing == nil {
			fmt.Fprintf(in.out, "✔ created Namespace %s\n", in.ns)
		}
	}

	var crds, rest []*unstructured.Unstructured
	for _, u := range objs {
		if u.GroupVersionKind().GroupKind() == crdGK {
			crds = append(crds, u)
		} else if u.GroupVersionKind().GroupKind() != nsGK || u.GetName() != in.ns {
			rest = append(rest, u)
		}
	}
	for _, u := range crds {
		if err := in.apply(ctx, u); err != nil {
			return err
		}
		refs = append(refs, refOf(u))
	}
	if len(crds) > 0 {
		err := in.waitFor(ctx, timeout, "CRDs to be established", func() (bool, string, error) {
			var pending []string
			for _, u := range crds {
				got, err := in.get(ctx, refOf(u))
				if err != nil {
					return false, "", err
				}
				if ok, _ := readiness(got); !ok {
					pending = append(pending, u.GetName())
				}
			}
			return len(pending) == 0, strings.Join(pending, ", "), nil
		})
		if err != nil {
			return err
		}
		// The new kinds are served now: read discovery again.
		in.mapper.Reset()
		fmt.Fprintf(in.out, "✔ %d CRDs applied and established\n", len(crds))
	}
	for _, u := range rest {
		if err := in.apply(ctx, u); err != nil {
			return err
		}
		refs = append(refs, refOf(u))
		fmt.Fprintf(in.out, "✔ applied %s\n", refOf(u))
	}
	// Prune: what the last install applied and this one did not. CRDs
	// stay (deleting one deletes every object of its kind in the
	// cluster): only uninstall --purge removes them.
	for i := len(previous) - 1; i >= 0; i-- {
		r := previous[i]
		if slices.Contains(refs, r) || r.gvk().GroupKind() == crdGK {
			continue
		}
		removed, err := in.remove(ctx, r)
		if err != nil {
			return err
		}
		if removed {
			fmt.Fprintf(in.out, "✔ pruned %s (no longer rendered)\n", r)
		}
	}
	return in.writeInventory(ctx, refs)
}

// rollouts waits until every Deployment and DaemonSet of objs has rolled
// out, as kubectl rollout status does.
func (in *installer) rollouts(ctx context.Context, objs []*unstructured.Unstructured, timeout time.Duration) error {
	for _, u := range objs {
		if k := u.GetKind(); k != "Deployment" && k != "DaemonSet" {
			continue
		}
		r := refOf(u)
		err := in.waitFor(ctx, timeout, r.String(), func() (bool, string, error) {
			got, err := in.get(ctx, r)
			if err != nil {
				return false, "", err
			}
			if got == nil {
				return false, "missing", nil
			}
			ok, state := readiness(got)
			return ok, state, nil
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(in.out, "✔ %s rolled out\n", r)
	}
	return nil
}

// readiness says whether an object is ready to serve and a short state:
// a CRD Established, a Deployment with every replica updated and
// available, a DaemonSet likewise on every node it should run on; other
// kinds are ready once they exist.
func readiness(u *unstructured.Unstructured) (bool, string) {
	gen, obs := u.GetGeneration(), nested(u, "status", "observedGeneration")
	switch u.GroupVersionKind().GroupKind() {
	case crdGK:
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
				return true, "Established"
			}
		}
		return false, "not established"
	case schema.GroupKind{Group: "apps", Kind: "Deployment"}:
		want := nested(u, "spec", "replicas")
		if _, found, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "replicas"); !found {
			want = 1
		}
		updated, avail := nested(u, "status", "updatedReplicas"), nested(u, "status", "availableReplicas")
		state := fmt.Sprintf("%d/%d available", avail, want)
		return obs >= gen && updated == want && avail == want, state
	case schema.GroupKind{Group: "apps", Kind: "DaemonSet"}:
		want := nested(u, "status", "desiredNumberScheduled")
		updated, avail := nested(u, "status", "updatedNumberScheduled"), nested(u, "status", "numberAvailable")
		state := fmt.Sprintf("%d/%d nodes ready", avail, want)
		return obs >= gen && updated == want && avail == want, state
	}
	return true, "exists"
}

func nested(u *unstructured.Unstructured, fields ...string) int64 {
	v, _, _ := unstructured.NestedFieldNoCopy(u.Object, fields...)
	switch n := v.(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	}
	return 0
}

// uninstall deletes what the last install applied (in reverse order),
// CRDs only with purge, and waits until it is gone.
func (in *installer) uninstall(ctx context.Context, refs []ref, purge bool, timeout time.Duration) error {
	var gone []ref
	for i := len(refs) - 1; i >= 0; i-- {
		r := refs[i]
		if r.gvk().GroupKind() == crdGK && !purge {
			continue
		}
		removed, err := in.remove(ctx, r)
		if err != nil {
			return err
		}
		if removed {
			fmt.Fprintf(in.out, "✔ deleted %s\n", r)
			gone = append(gone, r)
		}
	}
	if _, err := in.remove(ctx, ref{APIVersion: "v1", Kind: "ConfigMap", Namespace: in.ns, Name: inventoryName}); err != nil {
		return err
	}
	return in.waitFor(ctx, timeout, "deleted objects to go", func() (bool, string, error) {
		var left []string
		for _, r := range gone {
			u, err := in.get(ctx, r)
			if err != nil {
				return false, "", err
			}
			if u != nil && in.owned(u) {
				left = append(left, r.String())
			}
		}
		return len(left) == 0, strings.Join(left, ", "), nil
	})
}
