package localapi

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/zmesh/zmesh/controlplane/source/dir"
)

var opts = Options{
	Nodes:       []Node{{Name: "node-1", PodCIDR: netip.MustParsePrefix("10.50.1.0/24")}, {Name: "node-2", PodCIDR: netip.MustParsePrefix("10.50.2.0/24")}},
	ServiceCIDR: netip.MustParsePrefix("10.96.0.0/24"),
}

// Istio's bookinfo and curl, applied: Deployments become pods named as a
// ReplicaSet names them, with the template's labels, spread over the
// nodes at addresses of each node's range; Services get cluster IPs;
// ServiceAccounts are stored without a word; and zmeshd's directory
// source reads the output with no error at all.
func TestBookinfoIsApplied(t *testing.T) {
	c, err := Read("../testdata/bookinfo", opts)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Object{}
	for _, o := range c.Objects {
		if o.Rejected != "" {
			t.Errorf("%s %s/%s (%s doc %d) rejected: %s", o.Kind, o.Namespace, o.Name, o.File, o.Doc, o.Rejected)
		}
		byName[o.Kind+" "+o.Namespace+"/"+o.Name] = o
	}
	if got := byName["ServiceAccount default/curl"].Note; got != "zmesh does not act on ServiceAccount" {
		t.Errorf("ServiceAccount curl: note %q", got)
	}
	if got := byName["Deployment default/reviews-v2"].Note; got != "1 pod" {
		t.Errorf("Deployment reviews-v2: note %q", got)
	}
	if len(c.Pods) != 7 {
		t.Fatalf("%d pods, want 7 (6 of bookinfo, curl)", len(c.Pods))
	}
	name := regexp.MustCompile(`^(details-v1|ratings-v1|reviews-v[123]|productpage-v1|curl)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$`)
	perNode := map[string]int{}
	ips := map[string]bool{}
	for _, p := range c.Pods {
		if !name.MatchString(p.Name) {
			t.Errorf("pod name %q is not a Deployment's pod name", p.Name)
		}
		if p.Labels["app"] == "" || p.Labels["pod-template-hash"] == "" || !strings.Contains(p.Name, "-"+p.Labels["pod-template-hash"]+"-") {
			t.Errorf("pod %s: labels %v", p.Name, p.Labels)
		}
		perNode[p.Spec.NodeName]++
		ip := netip.MustParseAddr(p.Status.PodIP)
		n := opts.Nodes[0]
		if p.Spec.NodeName == "node-2" {
			n = opts.Nodes[1]
		}
		if !n.PodCIDR.Contains(ip) || ips[ip.String()] {
			t.Errorf("pod %s on %s at %s: not a free address of %s", p.Name, p.Spec.NodeName, ip, n.PodCIDR)
		}
		ips[ip.String()] = true
	}
	if perNode["node-1"] != 4 || perNode["node-2"] != 3 {
		t.Errorf("pods per node %v, want 4 and 3 (round robin)", perNode)
	}
	if got := byName["Service default/productpage"].Note; !strings.HasPrefix(got, "clusterIP 10.96.0.") {
		t.Errorf("Service productpage: note %q", got)
	}

	out := t.TempDir()
	if err := c.Write(out, nil); err != nil {
		t.Fatal(err)
	}
	u, err := (&dir.Source{Dir: out, StateDir: t.TempDir()}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Errors) > 0 {
		t.Errorf("zmeshd's source rejects the output: %v", u.Errors)
	}
	s := u.Snapshot
	if len(s.Pods) != 7 || len(s.Services) != 8 || len(s.Gateways) != 1 || len(s.HTTPRoutes) != 1 || len(s.AuthorizationPolicies) != 1 || len(s.Namespaces) != 1 {
		t.Errorf("zmeshd reads %d pods, %d services, %d gateways, %d routes, %d policies, %d namespaces; want 7, 8, 1, 1, 1, 1",
			len(s.Pods), len(s.Services), len(s.Gateways), len(s.HTTPRoutes), len(s.AuthorizationPolicies), len(s.Namespaces))
	}
	for _, svc := range s.Services {
		if svc.Spec.ClusterIP == "" {
			t.Errorf("service %s has no cluster IP", svc.Name)
		}
	}
}

// What an API server would refuse is refused, with the field; an
// address the input gives is kept and not handed out again; a pod placed
// on a node that is not here is refused.
func TestRejections(t *testing.T) {
	in := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(in, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  actoin: DENY
---
apiVersion: v1
kind: Pod
metadata: {name: fixed}
spec:
  nodeName: node-1
  containers: [{name: app, image: app}]
status: {podIP: 10.50.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: free}
spec:
  nodeName: node-1
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere}
spec:
  nodeName: node-9
  containers: [{name: app, image: app}]
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {k: v}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: listed}
  spec:
    ports: [{port: 80}]
`)
	c, err := Read(in, opts)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Object{}
	for _, o := range c.Objects {
		got[o.Name] = o
	}
	if o := got["typo"]; !strings.Contains(o.Rejected, "actoin") || o.Namespace != "shop" {
		t.Errorf("AuthorizationPolicy with a misspelt field: %+v, want rejected naming the field", o)
	}
	if o := got["fixed"]; o.Namespace != "default" || o.Note != "node-1 10.50.1.10" {
		t.Errorf("pod fixed: %+v, want namespace default (as kubectl apply) and its placement", o)
	}
	if r := got["elsewhere"].Rejected; !strings.Contains(r, `spec.nodeName: "node-9" is not a node here`) {
		t.Errorf("pod on node-9: rejected %q", r)
	}
	if r := got["w"].Rejected; !strings.Contains(r, "no kind example.com/v1 Widget") {
		t.Errorf("unknown kind: rejected %q", r)
	}
	if o := got["cm"]; o.Rejected != "" || o.Note != "" || !slices.ContainsFunc(c.files[o.File], func(raw []byte) bool { return bytes.Contains(raw, []byte("kind: ConfigMap")) }) {
		t.Errorf("ConfigMap: %+v, want stored and written for the waypoint runner (a Gateway's parametersRef)", o)
	}
	if o := got["listed"]; o.Kind != "Service" || o.Rejected != "" || !strings.HasPrefix(o.Note, "clusterIP 10.96.0.") {
		t.Errorf("a List's Service: %+v, want applied like any Service", o)
	}
	ips := map[string]string{}
	for _, p := range c.Pods {
		ips[p.Name] = p.Status.PodIP
	}
	if ips["fixed"] != "10.50.1.10" || ips["free"] != "10.50.1.11" || len(ips) != 2 {
		t.Errorf("pod addresses %v, want fixed at 10.50.1.10 and free at the next one", ips)
	}
}

// A second apply with the last one as Previous keeps what did not change:
// the pods of an unchanged Deployment keep their names, nodes and
// addresses, Services their cluster IPs; a changed template gets new pods;
// the output file of an input file that went is removed.
func TestReapplyKeepsWhatDidNotChange(t *testing.T) {
	in := t.TempDir()
	if err := os.CopyFS(in, os.DirFS("../testdata/bookinfo")); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	first, err := Read(in, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Write(out, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(in, "bookinfo.yaml"))
	edited := strings.Replace(string(b), "examples-bookinfo-reviews-v3:1.20.1", "examples-bookinfo-reviews-v3:1.21.0", 1)
	os.WriteFile(filepath.Join(in, "bookinfo.yaml"), []byte(edited), 0o644)
	os.Remove(filepath.Join(in, "reviews-route.yaml"))
	o := opts
	o.Previous = first
	second, err := Read(in, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Write(out, first); err != nil {
		t.Fatal(err)
	}
	was := map[string]string{}
	for _, p := range first.Pods {
		was[p.Name] = p.Spec.NodeName + " " + p.Status.PodIP
	}
	for _, p := range second.Pods {
		kept, ok := was[p.Name]
		v3 := p.Labels["version"] == "v3"
		switch {
		case v3 && ok:
			t.Errorf("reviews-v3's template changed but its pod %s was kept", p.Name)
		case !v3 && kept != p.Spec.NodeName+" "+p.Status.PodIP:
			t.Errorf("pod %s (unchanged) is now %s %s, was %q", p.Name, p.Spec.NodeName, p.Status.PodIP, kept)
		}
	}
	if len(second.Pods) != 7 {
		t.Errorf("%d pods after the edit, want 7", len(second.Pods))
	}
	for k, ip := range first.clusterIPs {
		if second.clusterIPs[k] != ip {
			t.Errorf("service %s: cluster IP %s, was %s", k, second.clusterIPs[k], ip)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "reviews-route.yaml")); !os.IsNotExist(err) {
		t.Errorf("the applied route's file is still there after its input went: %v", err)
	}
}
