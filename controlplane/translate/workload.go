package translate

import (
	"net/netip"
	"regexp"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/api/workload"
)

// Enrolment labels and annotations, as in Istio.
const (
	labelDataplaneMode    = "istio.io/dataplane-mode"
	dataplaneAmbient      = "ambient"
	dataplaneNone         = "none"
	annotationRedirection = "ambient.istio.io/redirection"
	redirectionEnabled    = "enabled"
	// annotationSidecarStatus marks a pod with an Istio sidecar, which
	// ambient never captures.
	annotationSidecarStatus = "sidecar.istio.io/status"
)

// PodUID is the Workload uid of a pod: Istio's form, not metadata.uid.
func PodUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// InMesh reports whether a pod is captured by ztunnel: enrolled by its own
// or its namespace's istio.io/dataplane-mode label (its own "none" opts it
// out), not on the host network, without a sidecar, running with an IP and,
// when requireAnnotation, confirmed by the CNI agent's redirection
// annotation.
func InMesh(p *corev1.Pod, ns *corev1.Namespace, requireAnnotation bool) bool {
	if !hasWorkload(p) || p.Annotations[annotationSidecarStatus] != "" {
		return false
	}
	switch p.Labels[labelDataplaneMode] {
	case dataplaneNone:
		return false
	case dataplaneAmbient:
	default:
		if ns == nil || ns.Labels[labelDataplaneMode] != dataplaneAmbient {
			return false
		}
	}
	return !requireAnnotation || p.Annotations[annotationRedirection] == redirectionEnabled
}

// hasWorkload reports whether a pod is a Workload at all: Running with an
// IP, not terminating, not on the host network. Pending, Succeeded and
// Failed pods are left out.
func hasWorkload(p *corev1.Pod) bool {
	if p == nil || p.DeletionTimestamp != nil || p.Spec.HostNetwork {
		return false
	}
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	return p.Status.PodIP != "" || len(p.Status.PodIPs) > 0
}

// podResult is what one pod contributes to a translation. It depends on
// the pod and on the snapshot's other kinds, never on other pods: that is
// what lets Incremental reuse it while neither changes.
type podResult struct {
	// addr is the pod's Workload; nil when the pod is no workload.
	addr *workload.Address
	// conds holds the findings about the pod itself.
	conds conditions
	// policies are the selector AuthorizationPolicies that selected it.
	policies []*apEntry
	// captured: ztunnel captures the pod (it enforces the pod's
	// policies); waypoint names the waypoint ("namespace/name") the pod
	// belongs to, which enforces them itself.
	captured bool
	waypoint string
	// paWinner is the selector PeerAuthentication in force on the pod, if
	// any; paLosers the others that also select it.
	paWinner *securityv1.PeerAuthentication
	paLosers []*securityv1.PeerAuthentication
	// strictFrom is the PeerAuthentication that makes the pod STRICT on
	// all ports, if one does: the workload lists its policy.
	strictFrom *securityv1.PeerAuthentication
}

// pod translates a pod without touching the translator's per-run state:
// what it learns goes into the result, which podPhase.add applies.
func (t *translator) pod(p *corev1.Pod) *podResult {
	r := &podResult{}
	if w := t.podWorkload(p, r); w != nil {
		r.addr = &workload.Address{Type: &workload.Address_Workload{Workload: w}}
	}
	return r
}

// podWorkload translates a pod into r; nil when the pod is no workload.
func (t *translator) podWorkload(p *corev1.Pod, r *podResult) *workload.Workload {
	if !hasWorkload(p) {
		return nil
	}
	ns := t.namespaces[p.Namespace]
	w := &workload.Workload{
		Uid:            PodUID(t.mesh.ClusterID, p.Namespace, p.Name),
		Name:           p.Name,
		Namespace:      p.Namespace,
		Network:        t.mesh.Network,
		TunnelProtocol: workload.TunnelProtocol_NONE,
		TrustDomain:    t.mesh.TrustDomain,
		ServiceAccount: p.Spec.ServiceAccountName,
		Node:           p.Spec.NodeName,
		ClusterId:      t.mesh.ClusterID,
		Status:         workload.WorkloadStatus_UNHEALTHY,
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	// A waypoint is not captured (its dataplane-mode is none) but speaks
	// HBONE itself on 15008: clients' ztunnels must tunnel to it.
	waypoint := t.isWaypointItself(p.Namespace, p.Name, p.Labels, false)
	if waypoint {
		r.waypoint = joinKey(p.Namespace, p.Labels[labelGatewayName])
	}
	if InMesh(p, ns, t.opts.RequireRedirectionAnnotation) || waypoint {
		if validSegment(p.Namespace) && validSegment(w.ServiceAccount) {
			w.TunnelProtocol = workload.TunnelProtocol_HBONE
			r.captured = !waypoint
			// It terminates HBONE itself: a node agent without a cluster
			// (which knows pods only from this stream) must not capture
			// it, as the one with a cluster leaves it alone for its
			// dataplane-mode none.
			w.NativeTunnel = waypoint
		} else {
			r.conds.fail(podRef(p), ZtunnelAccepted, ReasonInvalidValue,
				"metadata.namespace, spec.serviceAccountName: cannot form a SPIFFE identity; not reached over HBONE")
		}
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Zone() == "" {
			w.Addresses = append(w.Addresses, a.Unmap().AsSlice())
		}
	}
	if len(w.Addresses) == 0 {
		return nil
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			w.Status = workload.WorkloadStatus_HEALTHY
		}
	}
	w.WorkloadName, w.WorkloadType = workloadNameAndType(p)
	w.CanonicalName = canonicalName(p.Labels, w.WorkloadName)
	w.CanonicalRevision = canonicalRevision(p.Labels)

	t.services[p.Namespace].each(p.Labels, func(s selectedService) {
		if pl, ok := podPorts(s.svc, p); ok {
			if w.Services == nil {
				w.Services = map[string]*workload.PortList{}
			}
			w.Services[s.key] = pl
		}
	})
	t.seSelectors[p.Namespace].each(p.Labels, func(sel *seSelection) {
		if w.Services == nil {
			w.Services = map[string]*workload.PortList{}
		}
		for _, k := range sel.keys {
			if _, ok := w.Services[k]; !ok {
				w.Services[k] = sel.ports
			}
		}
	})
	w.AuthorizationPolicies = t.policiesFor(p, r)
	if !t.isWaypointItself(p.Namespace, p.Name, p.Labels, false) {
		w.Waypoint = t.waypointFor(&r.conds, p.Labels, p.Namespace, podRef(p), true)
	}
	// Opted out: its ztunnel must not hold it to the waypoints of the
	// services selecting it either, which it would otherwise do on their
	// target ports. Only the literal "none" opts out.
	w.WaypointExempt = p.Labels[labelUseWaypoint] == "none"
	return w
}

// cronJobName matches the Jobs a CronJob creates: "<cronjob>-<minutes since
// the epoch>", eight or more digits.
var cronJobName = regexp.MustCompile(`^(.+)-[0-9]{8,}$`)

// workloadNameAndType follows Istio: a ReplicaSet controller named
// "<deployment>-<pod-template-hash>" means a Deployment, a Job one of a
// CronJob (by its name) or a Job, any other controller gives its own name
// with type POD, and a pod without controller is its own workload.
func workloadNameAndType(p *corev1.Pod) (string, workload.WorkloadType) {
	for _, ref := range p.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch ref.Kind {
		case "ReplicaSet":
			if h := p.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
				return strings.TrimSuffix(ref.Name, "-"+h), workload.WorkloadType_DEPLOYMENT
			}
		case "Job":
			if m := cronJobName.FindStringSubmatch(ref.Name); m != nil {
				return m[1], workload.WorkloadType_CRONJOB
			}
			return ref.Name, workload.WorkloadType_JOB
		}
		return ref.Name, workload.WorkloadType_POD
	}
	return p.Name, workload.WorkloadType_POD
}

func canonicalName(labels map[string]string, fallback string) string {
	for _, k := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return fallback
}

func canonicalRevision(labels map[string]string) string {
	for _, k := range []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"} {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return "latest"
}

// WorkloadNames are how a pod's workload is named in its WDS Workload and
// in telemetry: the workload (a Deployment's name for a ReplicaSet's pod,
// else the controller's, else the pod's), and Istio's canonical service
// and revision.
func WorkloadNames(p *corev1.Pod) (workload, canonicalService, canonicalRev string) {
	workload, _ = workloadNameAndType(p)
	return workload, canonicalName(p.Labels, workload), canonicalRevision(p.Labels)
}
