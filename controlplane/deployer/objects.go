package deployer

import (
	"istio.io/api/label"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/zmesh/zmesh/controlplane/model"
)

// ManagedLabelValue marks the objects the controller owns (label
// gateway.istio.io/managed), as Istio marks its waypoints; the translation
// and Istio's tools recognise waypoint workloads by it.
const ManagedLabelValue = model.WaypointManagedValue

// Paths and ports of the waypoint's pod.
const (
	tokenDir     = "/var/run/secrets/tokens"
	tokenFile    = "istio-token"
	rootCertDir  = "/var/run/secrets/istio"
	rootCertFile = "root-cert.pem"
	// rootCertConfigMap is where Istio publishes the mesh's roots in each
	// namespace.
	rootCertConfigMap = "istio-ca-root-cert"
	metricsPort       = 15020
	readinessPort     = 15021
	tokenAudience     = "istio-ca"
	tokenLifetime     = 12 * 60 * 60 // seconds
)

// objects are what the controller keeps for one waypoint Gateway, as
// server-side apply configurations: the fields listed are the ones the
// controller owns; others (e.g. replicas, scaled by users) stay theirs.
type objects struct {
	serviceAccount *corev1ac.ServiceAccountApplyConfiguration
	deployment     *appsv1ac.DeploymentApplyConfiguration
	service        *corev1ac.ServiceApplyConfiguration
	// hpa and pdb are nil unless Options.Sizing asks for them.
	hpa *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration
	pdb *policyv1ac.PodDisruptionBudgetApplyConfiguration
}

// desired builds the objects of a valid waypoint Gateway. They share the
// Gateway's name and namespace, as in Istio.
func desired(gw *gatewayv1.Gateway, opts Options) objects {
	ns, name := gw.Namespace, gw.Name
	owner := metav1ac.OwnerReference().
		WithAPIVersion(gatewayv1.GroupVersion.String()).WithKind("Gateway").
		WithName(name).WithUID(gw.UID).
		WithController(true).WithBlockOwnerDeletion(true)

	// The Deployment's selector is immutable: only the gateway name, as
	// in Istio; everything else may change.
	selector := map[string]string{label.IoK8sNetworkingGatewayGatewayName.Name: name}
	_, annotations := infrastructure(gw)
	labels, podLabels := model.WaypointLabels(gw)

	sa := corev1ac.ServiceAccount(name, ns).
		WithLabels(labels).WithAnnotations(annotations).WithOwnerReferences(owner)

	args := []string{
		"--root-cert=" + rootCertDir + "/" + rootCertFile,
		"--token-file=" + tokenDir + "/" + tokenFile,
	}
	if opts.XDSAddress != "" {
		args = append(args, "--xds-address="+opts.XDSAddress)
	}
	args = append(args, opts.ExtraArgs...)
	container := corev1ac.Container().
		WithName("waypoint").
		WithImage(opts.Image).
		WithCommand("waypoint").
		WithArgs(args...).
		WithPorts(
			corev1ac.ContainerPort().WithName(ListenerName).WithContainerPort(ListenerPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(metricsPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("status").WithContainerPort(readinessPort).WithProtocol(corev1.ProtocolTCP),
		).
		WithEnv(
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("INSTANCE_IP", "status.podIP"),
			fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz/ready").WithPort(intstr.FromInt32(readinessPort))).
			WithPeriodSeconds(5)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("istio-token").WithMountPath(tokenDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("istio-ca-root-cert").WithMountPath(rootCertDir).WithReadOnly(true),
		).
		WithSecurityContext(corev1ac.SecurityContext().
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithRunAsNonRoot(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")))
	if opts.ImagePullPolicy != "" {
		container.WithImagePullPolicy(opts.ImagePullPolicy)
	}
	if res := opts.Sizing.resources(); res != nil {
		container.WithResources(res)
	}

	deployment := appsv1ac.Deployment(name, ns).
		WithLabels(labels).WithAnnotations(annotations).WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).WithAnnotations(annotations).
				WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(name).
					WithTerminationGracePeriodSeconds(30).
					WithContainers(container).
					WithVolumes(
						corev1ac.Volume().WithName("istio-token").WithProjected(corev1ac.ProjectedVolumeSource().
							WithSources(corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
								WithAudience(tokenAudience).WithExpirationSeconds(tokenLifetime).WithPath(tokenFile)))),
						corev1ac.Volume().WithName("istio-ca-root-cert").WithConfigMap(corev1ac.ConfigMapVolumeSource().
							WithName(rootCertConfigMap).WithOptional(true)),
					))))
	// Replicas are the Deployment's only when the sizing sets them and no
	// autoscaler owns them; otherwise users may scale it.
	if opts.Sizing.Replicas > 0 && !opts.Sizing.autoscaled() {
		deployment.Spec.WithReplicas(opts.Sizing.Replicas)
	}

	service := corev1ac.Service(name, ns).
		WithLabels(labels).WithAnnotations(annotations).WithOwnerReferences(owner).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(selector).
			WithPorts(corev1ac.ServicePort().
				WithName(ListenerName).
				WithPort(ListenerPort).
				WithTargetPort(intstr.FromInt32(ListenerPort)).
				WithProtocol(corev1.ProtocolTCP)))

	return objects{serviceAccount: sa, deployment: deployment, service: service,
		hpa: opts.Sizing.hpa(gw, labels, owner), pdb: opts.Sizing.pdb(gw, labels, selector, owner)}
}

// infrastructure returns copies of spec.infrastructure's labels and
// annotations, which Gateway API asks to put on every generated object.
func infrastructure(gw *gatewayv1.Gateway) (labels, annotations map[string]string) {
	labels, annotations = map[string]string{}, map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			labels[string(k)] = string(v)
		}
		for k, v := range inf.Annotations {
			annotations[string(k)] = string(v)
		}
	}
	return labels, annotations
}

func fieldEnv(name, path string) *corev1ac.EnvVarApplyConfiguration {
	return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().
		WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath(path)))
}
