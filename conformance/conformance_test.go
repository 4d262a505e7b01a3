package conformance

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwconformance "sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/flags"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

// GatewayAPIVersion is the suite's version (the pinned module's), the
// reports folder it writes to.
const GatewayAPIVersion = "v1.6.3"

// Version names the implementation in the report: zmesh has no release
// yet, the report is of its main branch.
const Version = "main"

// Supported are the features zmesh claims beyond the profiles' core
// (Mesh, HTTPRoute, GRPCRoute): each one's tests pass on the waypoint.
var Supported = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	features.SupportGRPCRoute,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
	features.SupportHTTPRouteResponseHeaderModification,
	features.SupportHTTPRouteParentRefPort,
	features.SupportMeshClusterIPMatching,
	features.SupportMeshConsumerRoute,
	features.SupportMeshHTTPRouteNamedRouteRule,
	features.SupportMeshHTTPRouteQueryParamMatching,
	features.SupportMeshHTTPRouteRedirectPath,
	features.SupportMeshHTTPRouteRedirectPort,
	features.SupportMeshHTTPRouteSchemeRedirect,
	features.SupportMeshHTTPRouteBackendRequestHeaderModification,
	features.SupportMeshHTTPRouteRewritePath,
}

// Skipped are tests of claimed features that are not run, with why.
var Skipped = map[string]string{
	// Its second case dials an echo pod's IP on a port its Service's
	// waypoint holds and expects the pod to answer directly. zmesh refuses
	// that by design: a pod behind a waypoint accepts held ports only from
	// the waypoint, also when dialled by IP (docs/decisions.md, "Waypoints
	// cannot be bypassed"), where Istio lets such a client skip the
	// waypoint. Its first case (the route applies to the Service) passes.
	"MeshFrontend": "a pod behind a waypoint refuses clients that dial its IP around the waypoint (docs/decisions.md, \"Waypoints cannot be bypassed\")",
}

// The waypoint of the suite's mesh namespace, as Istio's ambient
// conformance run names it.
const (
	meshNamespace = "gateway-conformance-mesh"
	waypointName  = "namespace"
)

// TestMeshConformance runs the suite's mesh profiles: every suite
// namespace is ambient, and the mesh namespace uses a waypoint that zmeshd
// deploys (`zmeshctl waypoint apply`), through which the echo pods' HTTP
// and gRPC is routed. Flags of the suite (-run-test, -skip-tests,
// -supported-features, -conformance-profiles, -report-output, …) override
// the defaults set here.
func TestMeshConformance(t *testing.T) {
	start := time.Now()
	bindWaypoint(t)

	c, err := client.New(mesh.Env.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, install := range []func(*runtime.Scheme) error{gatewayv1.Install, apiextensionsv1.AddToScheme} {
		if err := install(c.Scheme()); err != nil {
			t.Fatal(err)
		}
	}
	clientset, err := kubernetes.NewForConfig(mesh.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	meshManifests, err := meshManifestsWithWaypoint()
	if err != nil {
		t.Fatal(err)
	}
	var skip []string
	for name := range Skipped {
		skip = append(skip, name)
	}
	opts := suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			// Every suite namespace is ambient; the mesh namespace also
			// uses the waypoint (meshManifestsWithWaypoint).
			NamespaceLabels:      map[string]string{"istio.io/dataplane-mode": "ambient"},
			CleanupBaseResources: false,
			CleanupTestResources: true,
			SupportedFeatures:    Supported,
			SkipTests:            skip,
			Mode:                 "default",
			TimeoutConfig:        config.DefaultTimeoutConfig(),
			ConformanceProfiles:  []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
			Implementation: confv1.Implementation{
				Organization: "zmesh", Project: "zmesh", URL: "https://github.com/zmesh/zmesh",
				Version: Version, Contact: []string{"zmesh maintainers"},
			},
		},
		Client:        c,
		Clientset:     clientset,
		RestConfig:    mesh.Env.Config,
		MeshManifests: "zmesh/mesh-manifests.yaml",
		ManifestFS:    []fs.FS{meshManifests, &gwconformance.Manifests},
	}
	flags.ApplyAll(&opts.ConfigurableOptions)
	if opts.ReportOutputPath != "" {
		if err := os.MkdirAll(filepath.Dir(opts.ReportOutputPath), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { t.Logf("suite wall time %s (cluster up before it)", time.Since(start).Round(time.Second)) })
	gwconformance.RunConformanceWithOptions(t, opts)
}

// bindWaypoint makes the suite's mesh namespace ambient and bound to the
// waypoint "namespace" before the suite applies its manifests, as Istio's
// ambient conformance run does with istioctl: the suite updates the
// namespace (keeping the labels, see meshManifestsWithWaypoint) and
// deploys its echo pods behind the running waypoint.
func bindWaypoint(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshNamespace, Labels: map[string]string{
		"gateway-conformance": "mesh", "istio.io/dataplane-mode": "ambient",
	}}}
	if _, err := mesh.Env.Client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	mesh.Zmeshctl(t, "waypoint", "apply", "-n", meshNamespace, "--name", waypointName, "--enroll-namespace", "--wait")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got, err := mesh.Env.Client.CoreV1().Namespaces().Get(ctx, meshNamespace, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["istio.io/use-waypoint"] != waypointName {
		t.Fatalf("namespace %s labels %v: want istio.io/use-waypoint=%s", meshNamespace, got.Labels, waypointName)
	}
}

// meshManifestsWithWaypoint is the suite's mesh manifests with the mesh
// namespace labelled istio.io/use-waypoint: the suite applies its
// Namespace objects with Update, which would drop the label.
func meshManifestsWithWaypoint() (fs.FS, error) {
	b, err := fs.ReadFile(&gwconformance.Manifests, "mesh/manifests.yaml")
	if err != nil {
		return nil, err
	}
	const nsLabels = "  name: " + meshNamespace + "\n  labels:\n    gateway-conformance: mesh\n"
	if bytes.Count(b, []byte(nsLabels)) != 1 {
		return nil, fmt.Errorf("mesh/manifests.yaml of the suite: the Namespace %s is not where it was (labels gateway-conformance: mesh)", meshNamespace)
	}
	b = bytes.Replace(b, []byte(nsLabels), []byte(nsLabels+"    istio.io/use-waypoint: "+waypointName+"\n"), 1)
	return fstest.MapFS{"zmesh/mesh-manifests.yaml": {Data: b}}, nil
}
