// Package translate is the control plane's pure translation from
// Kubernetes, Istio and Gateway API objects (a model.Snapshot) to what
// ztunnel consumes: istio.workload.Address resources (workloads and
// services) and istio.security.Authorization policies, plus a status
// condition for each object it has something to say about. It does no I/O
// and never modifies the snapshot; Translate keeps no state between calls,
// while Incremental, for the push loop, remembers the last snapshot's
// results to reuse them for unchanged objects, with the same output. It
// imports the wire types and controlplane/model, never the data planes.
//
// The semantics are Istio ambient's, so that the YAML in Istio's
// documentation means the same here. Where Istio is silent or where zmesh
// deliberately differs, the rules are:
//
// # Workloads
//
// Every pod that is Running with an IP, not terminating and not on the host
// network is a Workload, so ztunnel knows non-mesh endpoints too; pending,
// finished and terminating pods are not. A pod is in the mesh (HBONE) when
// its own or its namespace's istio.io/dataplane-mode label is "ambient" and
// its own is not "none", and it has no Istio sidecar (annotation
// sidecar.istio.io/status). With Options.RequireRedirectionAnnotation (in a
// cluster) it must also carry ambient.istio.io/redirection: enabled, which
// the CNI agent sets once ztunnel holds the pod; both must hold, so a pod
// whose label is removed turns plaintext at once. A pod whose namespace or
// service account cannot be part of a SPIFFE ID is never HBONE.
//
// The uid is Istio's "<cluster>//Pod/<ns>/<name>". The workload name and
// type follow istiod: a controlling ReplicaSet named
// "<deployment>-<pod-template-hash>" gives DEPLOYMENT, a Job named
// "<name>-<8+ digits>" gives CRONJOB <name>, another Job gives JOB, any
// other controller (StatefulSet, DaemonSet...) gives its own name with type
// POD, and a pod without controller is its own workload. The workload is
// HEALTHY iff its Ready condition is True.
//
// A pod backs each Service of its namespace whose non-empty selector its
// labels match. Named target ports are resolved through the pod's
// container ports (same protocol); a port the pod does not define is left
// out of its port list, and a pod that resolves none of a service's ports
// does not back it at all (ztunnel would otherwise send the traffic to the
// service port). Endpoints of selector-less Services (EndpointSlices) are
// not read.
//
// # Services and ServiceEntries
//
// A Service becomes "<ns>/<name>.<ns>.svc.<suffix>" with its cluster IPs
// (none when headless or ExternalName), one port per service port (the
// first when TCP and UDP share a number), target port numeric or 0 when
// named. A ServiceEntry becomes one Service per host, named
// "<ns>/<host>": addresses must be single IPs (a CIDR of more than one
// address is skipped and reported, since ztunnel matches VIPs exactly),
// wildcard hosts are skipped and reported, and a host already taken by a
// Kubernetes Service or an earlier ServiceEntry (by name) is skipped and
// reported. Inline endpoints become Workloads
// "<cluster>/networking.istio.io/ServiceEntry/<ns>/<name>/<address>",
// HBONE only when labelled istio.io/dataplane-mode: ambient; with DNS
// resolution an endpoint may be a hostname. A workloadSelector selects
// pods of the ServiceEntry's namespace like a Service selector. Location
// and endpoint weights are not used.
//
// exportTo (spec.exportTo of a ServiceEntry, the networking.istio.io/exportTo
// annotation of a Service) becomes the service's visibility: NAMESPACE when
// it names only the service's own namespace ("." or its name, or "~"), so
// ztunnel refuses clients of other namespaces; PUBLIC otherwise, since
// ztunnel cannot scope a service to a list of namespaces.
//
// # Waypoints
//
// istio.io/use-waypoint (and istio.io/use-waypoint-namespace) on a pod or
// its namespace binds the workload, on a Service/ServiceEntry or its
// namespace binds the service; the object's own label wins and "none"
// opts out. It names a Gateway of class istio-waypoint whose
// istio.io/waypoint-for (default service) must accept that kind; an
// object's own label naming a waypoint of the wrong kind binds nothing and
// does not fall back to the namespace's. The address is the cluster IP of
// the Service with the Gateway's name (created by the waypoint controller),
// port the Gateway's HBONE listener (15008). A missing Gateway or one
// without its Service yet binds nothing, and the labelled object gets a
// False istio.io/WaypointBound condition: until the waypoint exists ztunnel
// sends traffic directly, as Istio does. We chose this over failing closed
// because a waypoint is a routing choice, not a security boundary:
// AuthorizationPolicies enforced by ztunnel still apply, and those with
// targetRefs (which need the waypoint) are reported as not enforced. A
// waypoint's own pods and Service are never bound.
//
// # PeerAuthentication
//
// The most specific policy wins: one with a workload selector, else the
// namespace-wide one, else the root namespace's, else PERMISSIVE; UNSET
// inherits the next level. Selectors only match in the policy's namespace
// (root-namespace selector policies only select root-namespace pods). Of
// several candidates at one level the oldest wins (creationTimestamp, then
// name) and the others are reported. DISABLE acts as PERMISSIVE: ztunnel
// always accepts HBONE. portLevelMtls keys are target (container) ports and
// only count with a selector, as in Istio.
//
// The result reaches ztunnel as DENY policies named after the
// PeerAuthentication they enforce,
// "<ns>/istio_converted_peer_authentication_<name>": a workload STRICT on
// every port lists the one of the PeerAuthentication that makes it so, a
// DENY of connections without a peer identity (not_principals:
// [presence]); a selector policy whose ports differ from its mode lists its
// own, restricted to the STRICT ports (destination_ports) under a
// PERMISSIVE mode or sparing the non-STRICT ones (not_destination_ports)
// under STRICT. istiod shares one "<root ns>/istio_converted_static_strict"
// among the former; naming each after its PeerAuthentication lets
// ztunnel's refusal name what the user wrote. All are WORKLOAD_SELECTOR
// policies listed on the workloads they apply to, so a
// workload-level PERMISSIVE lifts a namespace STRICT.
//
// # AuthorizationPolicy
//
// A policy without targetRefs becomes the Authorization "<ns>/<name>":
// GLOBAL in the root namespace without selector, NAMESPACE without
// selector, else WORKLOAD_SELECTOR, listed (sorted) on the workloads it
// selects — in every namespace when it lives in the root namespace.
// dry_run comes from the istio.io/dry-run annotation. AUDIT and CUSTOM
// policies are not sent (condition ZtunnelAccepted=False). Policies with
// targetRefs are enforced by waypoints and never sent to ztunnel; they get
// a WaypointAccepted condition, False when a target is missing or is a
// Service/ServiceEntry bound to no waypoint (WaypointRequired).
//
// Each rule becomes one Rule: the from entries one Clause (one Match each,
// any may match), the to entries another, and each when condition its own
// Clause. String values use Istio's forms ("*" presence, "*x" suffix, "x*"
// prefix); principals are written without "spiffe://". ipBlocks and
// remoteIpBlocks are both the source IP at ztunnel (set together, their
// intersection is kept); the when keys are source.ip, remote.ip,
// source.namespace, source.principal, destination.ip and destination.port.
//
// zmesh fails closed where Istio silently drops: HTTP attributes
// (requestPrincipals, hosts, methods, paths, request.* keys), unsupported
// ones (trustDomains, other keys) and invalid values (bad principal, CIDR,
// port, empty source) make an ALLOW rule match nothing — it is left out,
// and an ALLOW policy left with no rules allows nothing — while in a DENY
// rule they are treated as matching everything: a positive list with a bad
// value is dropped as a whole, a bad not-list entry alone, and an entry
// left empty matches every connection, so the rule denies at least its
// whole L4 match. Either way the policy gets ZtunnelAccepted=False with
// reason UnsupportedValue or InvalidValue and the field paths.
//
// # Conditions
//
// Output.Conditions has at most one condition per object and type, sorted:
// ZtunnelAccepted on every PeerAuthentication, AuthorizationPolicy
// without targetRefs and ServiceEntry (True when ztunnel gets it as
// written), WaypointAccepted on AuthorizationPolicies with targetRefs,
// istio.io/WaypointBound on each object carrying istio.io/use-waypoint,
// and ZtunnelAccepted=False on any object skipped or changed for a value
// that cannot be used (a name with "/", an invalid cluster IP, a pod whose
// identity cannot be formed). A selector matching no running pod, or only
// pods ztunnel does not capture, is noted on a True condition. A selector
// policy that matches no captured pod but a waypoint's pods (a running
// one's labels, or those its Deployment gives them) is the waypoint's to
// enforce on its tunnels (controlplane/l7, trustDomains included): its
// ZtunnelAccepted is True and names the waypoint, without the findings
// about what ztunnel could not enforce, which would concern no pod.
package translate
