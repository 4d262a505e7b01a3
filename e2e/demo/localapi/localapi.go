// Package localapi plays, for a local mesh with no cluster, the part of
// the API server and its controllers that a user's YAML relies on: it
// reads a directory of Kubernetes, Istio and Gateway API documents,
// rejects what an API server would refuse (a field the kind does not have,
// a bad name), keeps the kinds zmesh does not act on (ServiceAccount,
// Secret, …) without a word, turns Deployments, ReplicaSets,
// StatefulSets and DaemonSets into their pods, schedules pods with no
// spec.nodeName over the local nodes and gives them addresses from each
// node's pod range, and gives Services with no clusterIP one from the
// service range. What it produces is written as YAML for zmeshd's
// directory source and the node runners, which then see the completed
// objects a cluster would hold.
//
// It is pure but for reading the input and writing the output.
package localapi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/rand"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/zmesh/zmesh/controlplane/model"
)

// Node is a local node pods are scheduled on.
type Node struct {
	Name    string
	PodCIDR netip.Prefix
}

// Object is one document of the input, as the API server took it.
type Object struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// File is the document's file, relative to the input directory; Doc
	// its index in the file, from 1.
	File string `json:"file"`
	Doc  int    `json:"doc"`
	// Rejected is why an API server would have refused the document
	// (empty: it was stored).
	Rejected string `json:"rejected,omitempty"`
	// Note says what became of a stored object: "zmesh does not act on
	// ServiceAccount", "2 pods", "clusterIP 10.96.0.10".
	Note string `json:"note,omitempty"`
}

// Cluster is what the API server and its controllers hold after the input
// was applied.
type Cluster struct {
	// Objects lists every document of the input, in order.
	Objects []Object
	// Pods are the pods to run, scheduled and with addresses: the input's
	// and those of its workload controllers.
	Pods []*corev1.Pod
	// Gateways are the input's Gateways (of every class), as stored.
	Gateways []*gatewayv1.Gateway
	// files are the output files by name: the documents zmeshd reads.
	files map[string][][]byte
	// placed holds, by placementKey, where each pod was placed; clusterIPs
	// the Services' addresses by namespace/name: a later apply keeps them
	// for what did not change.
	placed     map[string][]placement
	clusterIPs map[string]string
	// written are the files Write wrote.
	written []string
}

// placement is a pod's name, node and address.
type placement struct{ name, node, ip string }

// Options place the cluster's objects.
type Options struct {
	Nodes []Node
	// ServiceCIDR is the range Services' cluster IPs come from.
	ServiceCIDR netip.Prefix
	// Previous is the cluster of the last apply, if any: pods whose
	// template (a bare pod: spec) did not change keep their names, nodes
	// and addresses, and Services their cluster IPs, as they would in a
	// cluster where only what changed is rolled out.
	Previous *Cluster
}

var decoder = serializer.NewCodecFactory(model.Scheme, serializer.EnableStrict).UniversalDeserializer()

// Read reads every .yaml, .yml and .json file under dir (hidden files and
// directories left out, as zmeshd's directory source does) and applies it.
func Read(dir string, opts Options) (*Cluster, error) {
	if len(opts.Nodes) == 0 {
		return nil, errors.New("no nodes to schedule pods on")
	}
	var names []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		hidden := strings.HasPrefix(d.Name(), ".") && path != dir
		if d.IsDir() {
			if hidden {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml", ".json":
			if !hidden {
				names = append(names, path)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s holds no .yaml, .yml or .json file", dir)
	}
	slices.Sort(names)
	a := newApplier(opts)
	for _, path := range names {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(dir, path)
		if err := a.file(rel, data); err != nil {
			return nil, err
		}
	}
	return a.finish()
}

// applier applies documents one by one, then places what needs placing.
type applier struct {
	opts    Options
	c       *Cluster
	pending []pendingPod
	svcs    []*pendingSvc
}

type pendingPod struct {
	pod  *corev1.Pod
	file string
	// key is the pod's placementKey.
	key string
	// obj is the index in c.Objects of the object the pod comes from.
	obj int
	// fixedNode is a DaemonSet's node.
	fixedNode string
}

type pendingSvc struct {
	svc  *corev1.Service
	file string
	obj  int
}

func newApplier(opts Options) *applier {
	return &applier{opts: opts, c: &Cluster{files: map[string][][]byte{}, placed: map[string][]placement{}, clusterIPs: map[string]string{}}}
}

func (a *applier) file(name string, data []byte) error {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := yr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			a.c.Objects = append(a.c.Objects, Object{File: name, Doc: doc, Kind: "?", Name: "?", Rejected: err.Error()})
			return nil // the rest of the file cannot be split either
		}
		if isEmpty(raw) {
			doc--
			continue
		}
		a.document(name, doc, raw)
	}
}

// document applies one document: it is rejected as an API server would,
// expanded into pods, placed, or stored as it is.
func (a *applier) document(file string, doc int, raw []byte) {
	o := Object{File: file, Doc: doc}
	obj, gvk, err := decoder.Decode(raw, nil, nil)
	if list, ok := obj.(*corev1.List); ok && err == nil {
		// kubectl applies a List's items one by one.
		for _, item := range list.Items {
			a.document(file, doc, item.Raw)
		}
		return
	}
	if gvk != nil {
		o.Group, o.Kind = gvk.Group, gvk.Kind
	}
	head := headOf(raw)
	if m, ok := obj.(metav1.Object); ok && err == nil {
		o.Namespace, o.Name = m.GetNamespace(), m.GetName()
	} else {
		o.Namespace, o.Name = head.Metadata.Namespace, head.Metadata.Name
	}
	if o.Kind == "" {
		o.Kind = head.Kind
		o.Group, _, _ = strings.Cut(head.APIVersion, "/")
		if !strings.Contains(head.APIVersion, "/") {
			o.Group = ""
		}
	}
	if o.Kind == "" {
		o.Kind = "?"
	}
	if o.Namespace == "" && o.Name != "" && namespacedKind(o.Kind) {
		o.Namespace = "default" // as kubectl apply does
	}
	if err != nil {
		if runtime.IsNotRegisteredError(err) {
			err = fmt.Errorf("no kind %s %s is known here (the Kubernetes, Istio and Gateway API kinds are)", head.APIVersion, head.Kind)
		}
		o.Rejected = err.Error()
		a.c.Objects = append(a.c.Objects, o)
		return
	}
	// zmeshd's own reading: the same validation, and whether it reads the
	// kind at all.
	snap := &model.Snapshot{}
	for _, err := range snap.Decode(bytes.NewReader(raw), file) {
		var de *model.DecodeError
		if errors.Is(err, model.ErrKindNotRead) {
			continue
		}
		if errors.As(err, &de) {
			err = de.Err
		}
		o.Rejected = err.Error()
		a.c.Objects = append(a.c.Objects, o)
		return
	}
	if m, ok := obj.(metav1.Object); ok && m.GetNamespace() == "" && namespaced(obj) {
		m.SetNamespace("default")
		o.Namespace = "default"
	}
	idx := len(a.c.Objects)
	a.c.Objects = append(a.c.Objects, o)
	switch {
	case len(snap.Pods) == 1:
		pod := snap.Pods[0]
		key := placementKey("Pod", pod.Namespace, pod.Name, specHash(pod.Spec, pod.Labels))
		if prev := a.previous(key); len(prev) == 1 && pod.Spec.NodeName == "" && pod.Status.PodIP == "" {
			pod.Spec.NodeName, pod.Status.PodIP = prev[0].node, prev[0].ip
		}
		a.pending = append(a.pending, pendingPod{pod: pod, file: file, obj: idx, key: key})
	case len(snap.Services) == 1:
		svc := snap.Services[0]
		if ip := a.previousIP(svc.Namespace + "/" + svc.Name); svc.Spec.ClusterIP == "" && ip != "" {
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
		}
		a.svcs = append(a.svcs, &pendingSvc{svc: svc, file: file, obj: idx})
	case len(snap.Namespaces)+len(snap.Nodes)+len(snap.ServiceEntries)+len(snap.PeerAuthentications)+len(snap.AuthorizationPolicies)+
		len(snap.GatewayClasses)+len(snap.Gateways)+len(snap.RequestAuthentications)+len(snap.VirtualServices)+len(snap.DestinationRules)+
		len(snap.IstioGateways)+len(snap.HTTPRoutes)+len(snap.GRPCRoutes)+len(snap.ConfigMaps) == 1:
		// Read by zmeshd as written; ConfigMaps by the waypoint runner, for
		// the Gateways' parametersRef.
		a.c.files[file] = append(a.c.files[file], raw)
		a.c.Gateways = append(a.c.Gateways, snap.Gateways...)
	default:
		a.workload(obj, file, idx)
	}
}

// workload expands a workload controller's object into its pods; other
// kinds zmesh does not read are stored and nothing more.
func (a *applier) workload(obj runtime.Object, file string, idx int) {
	o := &a.c.Objects[idx]
	var tmpl corev1.PodTemplateSpec
	var names []string
	var fixedNodes []string
	replicas := func(r *int32) int {
		if r == nil {
			return 1
		}
		return int(*r)
	}
	switch w := obj.(type) {
	case *appsv1.Deployment:
		tmpl = w.Spec.Template
		hash := templateHash(&tmpl)
		tmpl.Labels = withLabel(tmpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey, hash)
		for range replicas(w.Spec.Replicas) {
			names = append(names, w.Name+"-"+hash+"-"+rand.String(5))
		}
	case *appsv1.ReplicaSet:
		tmpl = w.Spec.Template
		for range replicas(w.Spec.Replicas) {
			names = append(names, w.Name+"-"+rand.String(5))
		}
	case *appsv1.StatefulSet:
		tmpl = w.Spec.Template
		for i := range replicas(w.Spec.Replicas) {
			names = append(names, fmt.Sprintf("%s-%d", w.Name, i))
		}
	case *appsv1.DaemonSet:
		tmpl = w.Spec.Template
		for _, n := range a.opts.Nodes {
			names = append(names, w.Name+"-"+rand.String(5))
			fixedNodes = append(fixedNodes, n.Name)
		}
	default:
		o.Note = "zmesh does not act on " + o.Kind
		return
	}
	ns := o.Namespace
	key := placementKey(o.Kind, ns, o.Name, templateHash(&tmpl))
	prev := a.previous(key)
	for i, name := range names {
		pod := &corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
			Spec:       *tmpl.Spec.DeepCopy(),
		}
		if i < len(prev) {
			pod.Name, pod.Spec.NodeName, pod.Status.PodIP = prev[i].name, prev[i].node, prev[i].ip
		}
		pp := pendingPod{pod: pod, file: file, obj: idx, key: key}
		if fixedNodes != nil {
			pp.fixedNode = fixedNodes[i]
		}
		a.pending = append(a.pending, pp)
	}
	o.Note = fmt.Sprintf("%d pods", len(names))
	if len(names) == 1 {
		o.Note = "1 pod"
	}
}

// finish schedules the pods, gives them and the Services addresses, and
// lays out the output files.
func (a *applier) finish() (*Cluster, error) {
	nodes := map[string]*nodeAddrs{}
	for _, n := range a.opts.Nodes {
		nodes[n.Name] = &nodeAddrs{Node: n, held: map[netip.Addr]bool{}}
	}
	// Addresses the input gives are the input's: held first.
	for _, p := range a.pending {
		if ip, err := netip.ParseAddr(p.pod.Status.PodIP); err == nil {
			if n := nodes[p.pod.Spec.NodeName]; n != nil {
				n.held[ip] = true
			}
		}
	}
	next := 0
	for _, p := range a.pending {
		pod, o := p.pod, &a.c.Objects[p.obj]
		pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
		if p.fixedNode != "" {
			pod.Spec.NodeName = p.fixedNode
		}
		if pod.Spec.HostNetwork {
			o.Note = joinNote(o.Note, "hostNetwork: not run here")
			a.c.files[p.file] = append(a.c.files[p.file], mustYAML(pod))
			continue
		}
		if pod.Spec.NodeName == "" {
			pod.Spec.NodeName = a.opts.Nodes[next%len(a.opts.Nodes)].Name
			next++
		}
		n := nodes[pod.Spec.NodeName]
		if n == nil {
			o.Rejected = fmt.Sprintf("pod %s: spec.nodeName: %q is not a node here (%s)", pod.Name, pod.Spec.NodeName, nodeNames(a.opts.Nodes))
			continue
		}
		if pod.Status.PodIP == "" {
			ip, err := n.take()
			if err != nil {
				return nil, err
			}
			pod.Status.PodIP = ip.String()
		} else if ip, err := netip.ParseAddr(pod.Status.PodIP); err != nil || !n.PodCIDR.Contains(ip) {
			o.Rejected = fmt.Sprintf("pod %s: status.podIP: %q is not in the pod range %s of node %s", pod.Name, pod.Status.PodIP, n.PodCIDR, n.Name)
			continue
		}
		model.NormalizeFilePod(pod)
		a.c.placed[p.key] = append(a.c.placed[p.key], placement{pod.Name, pod.Spec.NodeName, pod.Status.PodIP})
		a.c.Pods = append(a.c.Pods, pod)
		a.c.files[p.file] = append(a.c.files[p.file], mustYAML(pod))
		if o.Kind == "Pod" {
			o.Note = pod.Spec.NodeName + " " + pod.Status.PodIP
		}
	}
	held := map[netip.Addr]bool{}
	for _, s := range a.svcs {
		for _, ip := range append([]string{s.svc.Spec.ClusterIP}, s.svc.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(ip); err == nil {
				held[a] = true
			}
		}
	}
	svcRange := &nodeAddrs{Node: Node{Name: "services", PodCIDR: a.opts.ServiceCIDR}, held: held}
	for _, s := range a.svcs {
		svc, o := s.svc, &a.c.Objects[s.obj]
		if svc.Spec.ClusterIP == "" && svc.Spec.Type != corev1.ServiceTypeExternalName {
			ip, err := svcRange.take()
			if err != nil {
				return nil, err
			}
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip.String(), []string{ip.String()}
		}
		if svc.Spec.ClusterIP != "" {
			o.Note = "clusterIP " + svc.Spec.ClusterIP
			a.c.clusterIPs[svc.Namespace+"/"+svc.Name] = svc.Spec.ClusterIP
		}
		svc.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
		a.c.files[s.file] = append(a.c.files[s.file], mustYAML(svc))
	}
	return a.c, nil
}

func (a *applier) previous(key string) []placement {
	if a.opts.Previous == nil {
		return nil
	}
	return a.opts.Previous.placed[key]
}

func (a *applier) previousIP(key string) string {
	if a.opts.Previous == nil {
		return ""
	}
	return a.opts.Previous.clusterIPs[key]
}

// placementKey names a workload's (or bare pod's) pods across applies: its
// kind, namespace, name and a fingerprint of what its pods run.
func placementKey(kind, ns, name, fingerprint string) string {
	return kind + "/" + ns + "/" + name + "/" + fingerprint
}

// specHash fingerprints a bare pod.
func specHash(spec corev1.PodSpec, labels map[string]string) string {
	return templateHash(&corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec})
}

// nodeAddrs hands out a range's addresses from .10 up (below are the
// gateway and room for hand-written YAML), skipping those held.
type nodeAddrs struct {
	Node
	held map[netip.Addr]bool
}

func (n *nodeAddrs) take() (netip.Addr, error) {
	p := n.PodCIDR.Masked()
	a := p.Addr()
	for range 10 {
		a = a.Next()
	}
	for ; p.Contains(a) && p.Contains(a.Next()); a = a.Next() { // not the broadcast address
		if !n.held[a] {
			n.held[a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: range %s has no free address", n.Name, p)
}

// Write writes the cluster's objects under dir as YAML, one file per input
// file that had any (its path with "/" as "_"), for zmeshd's directory
// source and the node runners; each file is replaced whole (renamed over),
// and the files of previous that this cluster lacks are removed.
func (c *Cluster) Write(dir string, previous *Cluster) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.files)) {
		docs := c.files[name]
		out := []byte("# Applied by zmeshctl local from " + name + ": what the API server holds.\n")
		for _, d := range docs {
			out = append(out, "---\n"...)
			out = append(out, d...)
			if !bytes.HasSuffix(d, []byte("\n")) {
				out = append(out, '\n')
			}
		}
		base := strings.ReplaceAll(filepath.ToSlash(name), "/", "_")
		base = strings.TrimSuffix(base, filepath.Ext(base)) + ".yaml"
		tmp := filepath.Join(dir, "."+base+".tmp") // hidden: not read
		if err := os.WriteFile(tmp, out, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, base)); err != nil {
			return err
		}
		c.written = append(c.written, base)
	}
	if previous != nil {
		for _, old := range previous.written {
			if !slices.Contains(c.written, old) {
				if err := os.Remove(filepath.Join(dir, old)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		}
	}
	return nil
}

// templateHash is a ReplicaSet's pod-template-hash label as a Deployment
// names it: FNV-32a of the template, in the alphabet of generated names.
func templateHash(t *corev1.PodTemplateSpec) string {
	h := fnv.New32a()
	b, _ := yaml.Marshal(t)
	h.Write(b)
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

func withLabel(labels map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(labels)+1)
	for lk, lv := range labels {
		out[lk] = lv
	}
	out[k] = v
	return out
}

func namespaced(obj runtime.Object) bool {
	switch obj.(type) {
	case *corev1.Namespace, *corev1.Node, *corev1.PersistentVolume:
		return false
	}
	return namespacedKind(obj.GetObjectKind().GroupVersionKind().Kind)
}

// namespacedKind tells the cluster-scoped kinds a user's YAML may hold
// from the namespaced ones.
func namespacedKind(kind string) bool {
	switch kind {
	case "Namespace", "Node", "PersistentVolume", "GatewayClass", "StorageClass", "CustomResourceDefinition", "?":
		return false
	}
	return !strings.HasPrefix(kind, "Cluster")
}

// head is what a document says of itself, read even when it does not
// decode.
type head struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"metadata"`
}

func headOf(raw []byte) head {
	var h head
	yaml.Unmarshal(raw, &h)
	return h
}

func mustYAML(obj any) []byte {
	b, err := yaml.Marshal(obj)
	if err != nil {
		panic(err) // API types always marshal
	}
	return b
}

func isEmpty(raw []byte) bool {
	for line := range strings.SplitSeq(string(raw), "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func nodeNames(nodes []Node) string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return strings.Join(out, ", ")
}
