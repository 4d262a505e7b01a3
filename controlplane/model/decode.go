package model

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"io"
	"reflect"
	sigsyaml "sigs.k8s.io/yaml"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	networkingv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	k8sscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gatewayscheme "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/scheme"
)

// Scheme knows the Kubernetes, Istio and Gateway API kinds.
var Scheme = runtime.NewScheme()

var decoder runtime.Decoder

func init() {
	for _, add := range []func(*runtime.Scheme) error{k8sscheme.AddToScheme, istioscheme.AddToScheme, gatewayscheme.AddToScheme} {
		if err := add(Scheme); err != nil {
			panic(err)
		}
	}
	decoder = serializer.NewCodecFactory(Scheme, serializer.EnableStrict).UniversalDeserializer()
}

// DecodeError is one document that could not be read.
type DecodeError struct {
	// Source names the file; Doc is the document's index in it, from 1.
	Source string
	Doc    int
	// Object is "Kind namespace/name" when the document got that far.
	Object string
	// Key identifies the object when its kind and metadata could be read,
	// so a source can keep serving the object's last good version.
	Key ObjectKey
	Err error
}

// ObjectKey names an object across snapshots.
type ObjectKey struct {
	Group, Kind, Namespace, Name string
}

func (k ObjectKey) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// KeyOf returns obj's key.
func KeyOf(obj runtime.Object) ObjectKey {
	gvk := obj.GetObjectKind().GroupVersionKind()
	k := ObjectKey{Group: gvk.Group, Kind: gvk.Kind}
	if o, ok := obj.(Object); ok {
		k.Namespace, k.Name = o.GetNamespace(), o.GetName()
	}
	return k
}

// keyOfDocument reads the kind and metadata of a document that did not
// decode, when it is at least YAML.
func keyOfDocument(data []byte) ObjectKey {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
	}
	if err := sigsyaml.Unmarshal(data, &head); err != nil || head.Kind == "" || head.Metadata.Name == "" {
		return ObjectKey{}
	}
	group, _, _ := strings.Cut(head.APIVersion, "/")
	if !strings.Contains(head.APIVersion, "/") {
		group = "" // core, "v1"
	}
	return ObjectKey{Group: group, Kind: head.Kind, Namespace: head.Metadata.Namespace, Name: head.Metadata.Name}
}

func (e *DecodeError) Error() string {
	where := fmt.Sprintf("%s: document %d", e.Source, e.Doc)
	if e.Object != "" {
		where += " (" + e.Object + ")"
	}
	return where + ": " + e.Err.Error()
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Decode reads a stream of YAML (or JSON) documents and adds every object
// of a kind translation reads to s. A document that is malformed, has a
// field its kind does not know, or is of a kind translation does not read
// is reported in the returned errors (one per document) and skipped; the
// others are added. Objects of older API versions (security.istio.io/
// v1beta1, networking.istio.io/v1alpha3 and v1beta1, gateway.networking.
// k8s.io/v1beta1) are stored as their v1 equivalent. s is not sorted.
func (s *Snapshot) Decode(r io.Reader, source string) []error {
	var errs []error
	yr := utilyaml.NewYAMLReader(bufioReader(r))
	for doc := 1; ; doc++ {
		data, err := yr.Read()
		if errors.Is(err, io.EOF) {
			return errs
		}
		if err != nil {
			return append(errs, &DecodeError{Source: source, Doc: doc, Err: err})
		}
		if len(bytes.TrimSpace(stripComments(data))) == 0 {
			doc--
			continue
		}
		obj, gvk, err := decoder.Decode(data, nil, nil)
		if err != nil {
			de := &DecodeError{Source: source, Doc: doc, Err: err, Key: keyOfDocument(data)}
			switch {
			case de.Key.Kind != "":
				de.Object = de.Key.String()
			case gvk != nil && gvk.Kind != "":
				de.Object = gvk.Kind
			}
			errs = append(errs, de)
			continue
		}
		if o, ok := obj.(interface{ SetNamespace(string) }); ok && namespaced(obj) && obj.(Object).GetNamespace() == "" {
			o.SetNamespace("default") // as kubectl apply does
		}
		if err := validNames(obj); err != nil {
			errs = append(errs, &DecodeError{Source: source, Doc: doc, Object: describe(obj), Key: KeyOf(obj), Err: err})
			continue
		}
		if err := strictIstioSpec(obj, data); err != nil {
			errs = append(errs, &DecodeError{Source: source, Doc: doc, Object: describe(obj), Key: KeyOf(obj), Err: err})
			continue
		}
		if err := s.Add(obj); err != nil {
			errs = append(errs, &DecodeError{Source: source, Doc: doc, Object: describe(obj), Key: KeyOf(obj), Err: err})
		}
	}
}

// ErrKindNotRead is the error of a well-formed object of a kind translation
// does not read (a Secret beside the mesh's files, say): nothing of the
// mesh's config was lost by skipping it.
var ErrKindNotRead = errors.New("not read by zmesh")

// Add adds one object to s (unsorted).
func (s *Snapshot) Add(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		s.Namespaces = append(s.Namespaces, o)
	case *corev1.Pod:
		s.Pods = append(s.Pods, o)
	case *corev1.Node:
		s.Nodes = append(s.Nodes, o)
	case *corev1.ConfigMap:
		s.ConfigMaps = append(s.ConfigMaps, o)
	case *corev1.Service:
		s.Services = append(s.Services, o)
	case *networkingv1.ServiceEntry:
		s.ServiceEntries = append(s.ServiceEntries, o)
	case *networkingv1beta1.ServiceEntry:
		s.ServiceEntries = append(s.ServiceEntries, &networkingv1.ServiceEntry{TypeMeta: typeMeta("networking.istio.io/v1", "ServiceEntry"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1alpha3.ServiceEntry:
		s.ServiceEntries = append(s.ServiceEntries, &networkingv1.ServiceEntry{TypeMeta: typeMeta("networking.istio.io/v1", "ServiceEntry"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *securityv1.PeerAuthentication:
		s.PeerAuthentications = append(s.PeerAuthentications, o)
	case *securityv1beta1.PeerAuthentication:
		s.PeerAuthentications = append(s.PeerAuthentications, &securityv1.PeerAuthentication{TypeMeta: typeMeta("security.istio.io/v1", "PeerAuthentication"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *securityv1.AuthorizationPolicy:
		s.AuthorizationPolicies = append(s.AuthorizationPolicies, o)
	case *securityv1beta1.AuthorizationPolicy:
		s.AuthorizationPolicies = append(s.AuthorizationPolicies, &securityv1.AuthorizationPolicy{TypeMeta: typeMeta("security.istio.io/v1", "AuthorizationPolicy"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *gatewayv1.GatewayClass:
		s.GatewayClasses = append(s.GatewayClasses, o)
	case *gatewayv1beta1.GatewayClass:
		s.GatewayClasses = append(s.GatewayClasses, &gatewayv1.GatewayClass{TypeMeta: typeMeta("gateway.networking.k8s.io/v1", "GatewayClass"), ObjectMeta: o.ObjectMeta, Spec: o.Spec})
	case *gatewayv1.Gateway:
		s.Gateways = append(s.Gateways, o)
	case *gatewayv1beta1.Gateway:
		s.Gateways = append(s.Gateways, &gatewayv1.Gateway{TypeMeta: typeMeta("gateway.networking.k8s.io/v1", "Gateway"), ObjectMeta: o.ObjectMeta, Spec: o.Spec})
	case *securityv1.RequestAuthentication:
		s.RequestAuthentications = append(s.RequestAuthentications, o)
	case *securityv1beta1.RequestAuthentication:
		s.RequestAuthentications = append(s.RequestAuthentications, &securityv1.RequestAuthentication{TypeMeta: typeMeta("security.istio.io/v1", "RequestAuthentication"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1.VirtualService:
		s.VirtualServices = append(s.VirtualServices, o)
	case *networkingv1beta1.VirtualService:
		s.VirtualServices = append(s.VirtualServices, &networkingv1.VirtualService{TypeMeta: typeMeta("networking.istio.io/v1", "VirtualService"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1alpha3.VirtualService:
		s.VirtualServices = append(s.VirtualServices, &networkingv1.VirtualService{TypeMeta: typeMeta("networking.istio.io/v1", "VirtualService"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1.DestinationRule:
		s.DestinationRules = append(s.DestinationRules, o)
	case *networkingv1beta1.DestinationRule:
		s.DestinationRules = append(s.DestinationRules, &networkingv1.DestinationRule{TypeMeta: typeMeta("networking.istio.io/v1", "DestinationRule"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1alpha3.DestinationRule:
		s.DestinationRules = append(s.DestinationRules, &networkingv1.DestinationRule{TypeMeta: typeMeta("networking.istio.io/v1", "DestinationRule"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1.Gateway:
		s.IstioGateways = append(s.IstioGateways, o)
	case *networkingv1beta1.Gateway:
		s.IstioGateways = append(s.IstioGateways, &networkingv1.Gateway{TypeMeta: typeMeta("networking.istio.io/v1", "Gateway"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *networkingv1alpha3.Gateway:
		s.IstioGateways = append(s.IstioGateways, &networkingv1.Gateway{TypeMeta: typeMeta("networking.istio.io/v1", "Gateway"), ObjectMeta: o.ObjectMeta, Spec: *o.Spec.DeepCopy()})
	case *gatewayv1.HTTPRoute:
		s.HTTPRoutes = append(s.HTTPRoutes, o)
	case *gatewayv1beta1.HTTPRoute:
		s.HTTPRoutes = append(s.HTTPRoutes, &gatewayv1.HTTPRoute{TypeMeta: typeMeta("gateway.networking.k8s.io/v1", "HTTPRoute"), ObjectMeta: o.ObjectMeta, Spec: o.Spec})
	case *gatewayv1.GRPCRoute:
		s.GRPCRoutes = append(s.GRPCRoutes, o)
	default:
		return fmt.Errorf("kind %s is %w", obj.GetObjectKind().GroupVersionKind().Kind, ErrKindNotRead)
	}
	return nil
}

func describe(obj runtime.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	if o, ok := obj.(Object); ok {
		if o.GetNamespace() != "" {
			return kind + " " + o.GetNamespace() + "/" + o.GetName()
		}
		return kind + " " + o.GetName()
	}
	return kind
}

// stripComments drops whole-line comments, so a document of comments only
// counts as empty.
func stripComments(data []byte) []byte {
	var b bytes.Buffer
	for line := range strings.SplitSeq(string(data), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func bufioReader(r io.Reader) *bufio.Reader {
	if br, ok := r.(*bufio.Reader); ok {
		return br
	}
	return bufio.NewReader(r)
}

// strictIstioSpec re-reads the spec of an Istio object with protojson,
// which (unlike the JSON decoding Istio's Go types do) rejects fields the
// kind does not have, and names them.
func strictIstioSpec(obj runtime.Object, data []byte) error {
	// Istio's kinds keep their spec as an istio.io/api protobuf message;
	// the Kubernetes and Gateway API kinds do not.
	f := reflect.ValueOf(obj).Elem().FieldByName("Spec")
	if !f.IsValid() {
		return nil
	}
	spec, ok := f.Addr().Interface().(proto.Message)
	if !ok {
		return nil
	}
	j, err := sigsyaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	var doc struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(j, &doc); err != nil || len(doc.Spec) == 0 {
		return err
	}
	if err := protojson.Unmarshal(doc.Spec, spec.ProtoReflect().New().Interface()); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// validNames rejects what the API server would: an object with no name, or
// a name or namespace that is not a DNS name. Objects are keyed by them,
// so a nameless Service would be one that pods are placed in but that is
// never sent.
func validNames(obj runtime.Object) error {
	o, ok := obj.(Object)
	if !ok {
		return nil
	}
	if o.GetName() == "" {
		return errors.New("metadata.name: missing")
	}
	if errs := validation.IsDNS1123Subdomain(o.GetName()); len(errs) > 0 {
		return fmt.Errorf("metadata.name: %q: %s", o.GetName(), strings.Join(errs, "; "))
	}
	if ns := o.GetNamespace(); ns != "" {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("metadata.namespace: %q: %s", ns, strings.Join(errs, "; "))
		}
	}
	return nil
}

func namespaced(obj runtime.Object) bool {
	switch obj.(type) {
	case *corev1.Namespace, *corev1.Node, *gatewayv1.GatewayClass, *gatewayv1beta1.GatewayClass:
		return false
	}
	return true
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}
