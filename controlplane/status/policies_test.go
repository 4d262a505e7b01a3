package status

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/zmesh/zmesh/controlplane/l7"
	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/internal/kubetest"
	"github.com/zmesh/zmesh/internal/testutil"
)

const policyObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  jwtRules:
  - issuer: https://keys.example.com
    jwksUri: https://keys.example.com/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules: [{when: [{key: "request.auth.claims[group]", values: [admin]}, {key: "experimental.envoy.filters.x[y]", values: ["z"]}]}]
`

var (
	raRef     = l7.ObjectRef{Kind: "RequestAuthentication", Namespace: "shop", Name: "jwt"}
	claimsRef = l7.ObjectRef{Kind: "AuthorizationPolicy", Namespace: "shop", Name: "claims"}
	inForce   = "in force on waypoint shop/waypoint"
)

// TestPolicyConditions: the waypoints' problems with an AuthorizationPolicy
// make translation's WaypointAccepted False, naming the field; a
// RequestAuthentication is True once in force, False with its problem.
func TestPolicyConditions(t *testing.T) {
	conds := []translate.Condition{
		{Object: translate.ObjectRef{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: "claims"}, Type: translate.WaypointAccepted, Status: true, Reason: "Accepted", Message: "enforced by the targeted waypoint, not by ztunnel"},
		{Object: translate.ObjectRef{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: "ok"}, Type: translate.WaypointAccepted, Status: true, Reason: "Accepted"},
	}
	problems := []l7.Problem{
		{Object: claimsRef, Reason: l7.ReasonAccepted, Message: inForce},
		{Object: claimsRef, Reason: l7.ReasonUnsupportedValue, Field: "spec.rules[0].when[1].key", Message: "not an attribute the waypoint supports; the rule is left out"},
	}
	got := withWaypointProblems(conds, policyProblems(problems))
	if c := got[0]; c.Status || c.Reason != ReasonUnsupportedValue || !strings.Contains(c.Message, "spec.rules[0].when[1].key: not an attribute") {
		t.Errorf("claims: %+v", c)
	}
	if c := got[1]; !c.Status {
		t.Errorf("ok: %+v", c)
	}
	if !conds[0].Status {
		t.Error("the input was modified")
	}

	snap := modeltest.Decode(t, []byte(policyObjects))
	if st := authnStatuses(snap, nil); len(st) != 1 || st[0].Condition.Status || st[0].Condition.Reason != ReasonTargetNotFound {
		t.Errorf("unattached: %+v", st)
	}
	if st := authnStatuses(snap, []l7.Problem{{Object: raRef, Reason: l7.ReasonAccepted, Message: inForce}}); st[0].Condition.Status != true ||
		st[0].Condition.Message != "applied by waypoint shop/waypoint" {
		t.Errorf("in force: %+v", st[0].Condition)
	}
}

// TestPolicyStatusOnKubernetes writes, as zmeshd's service account, the
// WaypointAccepted conditions of a RequestAuthentication and of
// AuthorizationPolicies to a real API server: a jwksUri not fetched and a
// when key the waypoint cannot read are False naming their fields, and
// CUSTOM is refused; once fixed, Accepted.
func TestPolicyStatusOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	if err := env.WaitEstablished(ctx, 60*time.Second, "requestauthentications.security.istio.io", "authorizationpolicies.security.istio.io", "gateways.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	env.MustKubectl(t, policyObjects, "apply", "-f", "-")
	ic, err := istioclient.NewForConfig(env.AsServiceAccount("istio-system", "zmeshd"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Reporter{Log: slog.New(slog.DiscardHandler), Istio: ic, Mesh: model.DefaultMesh()}
	snap := modeltest.Decode(t, []byte(policyObjects))
	push := func(jwks func(string) (string, error)) {
		var problems []l7.Problem
		for _, gw := range snap.Gateways {
			problems = append(problems, l7.Build(l7.Options{Mesh: model.DefaultMesh(), JWKS: jwks}, snap, gw).Problems...)
		}
		r.ReportRoutes(ctx, snap, problems)
		r.Report(ctx, translate.Translate(translate.Options{Mesh: model.DefaultMesh()}, snap).Conditions)
	}
	push(nil)
	waitPolicy(t, ic, "RequestAuthentication", "jwt", "False", "UnsupportedValue", "spec.jwtRules[0].jwksUri: no key set")
	waitPolicy(t, ic, "AuthorizationPolicy", "claims", "False", "UnsupportedValue", "spec.rules[0].when[1].key")
	waitPolicy(t, ic, "AuthorizationPolicy", "ext", "False", "UnsupportedValue", "CUSTOM (external authorization) is not supported")

	// The keys arrive and the policy is fixed.
	snap = modeltest.Decode(t, []byte(strings.Replace(policyObjects, `, {key: "experimental.envoy.filters.x[y]", values: ["z"]}`, "", 1)))
	push(func(string) (string, error) {
		return `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`, nil
	})
	waitPolicy(t, ic, "RequestAuthentication", "jwt", "True", "Accepted", "applied by waypoint shop/waypoint")
	waitPolicy(t, ic, "AuthorizationPolicy", "claims", "True", "Accepted", "")
}

func waitPolicy(t *testing.T, ic istioclient.Interface, kind, name, status, reason, msg string) {
	t.Helper()
	waitCondition(t, ic, kind, name, WaypointAccepted, status, reason, msg)
}

// waitCondition waits until the object's condition typ has status and
// reason and its message contains msg.
func waitCondition(t *testing.T, ic istioclient.Interface, kind, name, typ, status, reason, msg string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, kind+" "+name+" status", func() error {
		var conds []interface {
			GetType() string
			GetStatus() string
			GetReason() string
			GetMessage() string
		}
		if kind == "RequestAuthentication" {
			o, err := ic.SecurityV1().RequestAuthentications("shop").Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, c := range o.Status.GetConditions() {
				conds = append(conds, c)
			}
		} else {
			o, err := ic.SecurityV1().AuthorizationPolicies("shop").Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, c := range o.Status.GetConditions() {
				conds = append(conds, c)
			}
		}
		var seen []string
		for _, c := range conds {
			if c.GetType() == typ && c.GetStatus() == status && c.GetReason() == reason && strings.Contains(c.GetMessage(), msg) {
				return nil
			}
			seen = append(seen, fmt.Sprintf("%s=%s %s %q", c.GetType(), c.GetStatus(), c.GetReason(), c.GetMessage()))
		}
		return fmt.Errorf("conditions %v, want %s=%s %s %q", seen, typ, status, reason, msg)
	})
}

// TestWorkloadPolicyConditions: a policy without targetRefs that a
// waypoint enforces as a workload's gets a WaypointAccepted condition
// beside translation's ZtunnelAccepted: True naming the waypoint, False
// naming a field the waypoint cannot read on its tunnels.
func TestWorkloadPolicyConditions(t *testing.T) {
	apRef := func(name string) translate.ObjectRef {
		return translate.ObjectRef{Group: "security.istio.io", Kind: "AuthorizationPolicy", Namespace: "shop", Name: name}
	}
	l4 := l7.ObjectRef{Kind: "AuthorizationPolicy", Namespace: "shop", Name: "l4"}
	withL7 := l7.ObjectRef{Kind: "AuthorizationPolicy", Namespace: "shop", Name: "with-l7"}
	conds := []translate.Condition{
		{Object: apRef("l4"), Type: translate.ZtunnelAccepted, Status: true, Reason: "Accepted"},
		{Object: apRef("with-l7"), Type: translate.ZtunnelAccepted, Status: true, Reason: "Accepted"},
	}
	problems := []l7.Problem{
		{Object: l4, Reason: l7.ReasonAccepted, Message: inForce},
		{Object: withL7, Reason: l7.ReasonAccepted, Message: inForce},
		{Object: withL7, Reason: l7.ReasonUnsupportedValue, Field: "spec.rules[0].to[0].operation.methods", Message: "HTTP attributes cannot be read; the rule is left out"},
	}
	got := withWaypointProblems(withWorkloadPolicies(conds, policyWaypoints(problems)), policyProblems(problems))
	byName := map[string]translate.Condition{}
	for _, c := range got {
		if c.Type == translate.WaypointAccepted {
			byName[c.Object.Name] = c
		}
	}
	if c, ok := byName["l4"]; !ok || !c.Status || !strings.Contains(c.Message, "waypoint shop/waypoint") {
		t.Errorf("l4: %+v", c)
	}
	if c, ok := byName["with-l7"]; !ok || c.Status || c.Reason != ReasonUnsupportedValue || !strings.Contains(c.Message, "spec.rules[0].to[0].operation.methods: HTTP") {
		t.Errorf("with-l7: %+v", c)
	}
	if len(got) != 4 || len(conds) != 2 {
		t.Errorf("got %d conditions from %d: %+v", len(got), len(conds), got)
	}
}

// waypointSelectorObjects: a waypoint with its pod running, a pod ztunnel
// captures, and selector policies on either. The pods are only in the
// snapshot, never in the API server: status is written to the policies.
const waypointSelectorObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-callers, namespace: shop}
spec:
  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}
  rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: app-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: app}}
  rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]
`

const waypointSelectorPods = `
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-7d9f
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec: {serviceAccountName: waypoint}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: app-0, namespace: shop, labels: {app: app}}
spec: {serviceAccountName: app}
status: {podIP: 10.244.1.3}
`

// TestWaypointSelectorPolicyStatusOnKubernetes writes, as zmeshd's service
// account, the conditions of selector AuthorizationPolicies to a real API
// server. One whose selector matches only the waypoint's pods, which
// ztunnel does not capture, is the waypoint's to enforce, trustDomains
// included: ZtunnelAccepted says ztunnel does not enforce it (not that
// trustDomains is unsupported, nor that it matches no pod), and
// WaypointAccepted that the waypoint does. One on a captured pod keeps
// ztunnel's finding: trustDomains is not supported there.
func TestWaypointSelectorPolicyStatusOnKubernetes(t *testing.T) {
	env := kubetest.ForTest(t)
	ctx := t.Context()
	env.MustKubectl(t, "", "apply", "--server-side", "-f", "../../deploy/crds/")
	env.MustKubectl(t, "", "apply", "-f", "../../deploy/rbac/")
	if err := env.WaitEstablished(ctx, 60*time.Second, "authorizationpolicies.security.istio.io", "gateways.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	env.MustKubectl(t, waypointSelectorObjects, "apply", "-f", "-")
	ic, err := istioclient.NewForConfig(env.AsServiceAccount("istio-system", "zmeshd"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Reporter{Log: slog.New(slog.DiscardHandler), Istio: ic, Mesh: model.DefaultMesh()}
	snap := modeltest.Decode(t, []byte(waypointSelectorObjects+"---"+waypointSelectorPods))
	var problems []l7.Problem
	for _, gw := range snap.Gateways {
		problems = append(problems, l7.Build(l7.Options{Mesh: model.DefaultMesh()}, snap, gw).Problems...)
	}
	r.ReportRoutes(ctx, snap, problems)
	r.Report(ctx, translate.Translate(translate.Options{Mesh: model.DefaultMesh()}, snap).Conditions)

	waitCondition(t, ic, "AuthorizationPolicy", "waypoint-callers", translate.ZtunnelAccepted, "True", "Accepted",
		"not enforced by ztunnel: spec.selector matches no pod ztunnel captures, only the pods of waypoint shop/waypoint")
	waitCondition(t, ic, "AuthorizationPolicy", "waypoint-callers", WaypointAccepted, "True", "Accepted",
		"enforced on the tunnels (L4) of waypoint shop/waypoint")
	waitCondition(t, ic, "AuthorizationPolicy", "app-callers", translate.ZtunnelAccepted, "False", "UnsupportedValue",
		"spec.rules[0].from[0].source.trustDomains: not supported by ztunnel")
	o, err := ic.SecurityV1().AuthorizationPolicies("shop").Get(ctx, "waypoint-callers", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range o.Status.GetConditions() {
		if strings.Contains(c.GetMessage(), "trustDomains") || strings.Contains(c.GetMessage(), "matches no running pod") {
			t.Errorf("waypoint-callers: %s=%s %q", c.GetType(), c.GetStatus(), c.GetMessage())
		}
	}
}
