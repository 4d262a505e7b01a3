package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// kubeFlags are kubectl's flags for reaching a cluster, global to every
// command.
type kubeFlags struct {
	kubeconfig, context, namespace string
	root                           *cobra.Command
}

func (k *kubeFlags) register(root *cobra.Command) {
	k.root = root
	f := root.PersistentFlags()
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&k.context, "context", "", "the kubeconfig context to use")
	f.StringVarP(&k.namespace, "namespace", "n", "", "the namespace (default: the context's, else \"default\")")
}

// namespaceGiven reports whether -n was on the command line.
func (k *kubeFlags) namespaceGiven() bool {
	return k.root.PersistentFlags().Changed("namespace")
}

// clients are what the Kubernetes commands use.
type clients struct {
	kube      kubernetes.Interface
	gateway   gatewayclient.Interface
	namespace string
	config    *rest.Config
}

// clients loads the kubeconfig as kubectl does and returns the clients and
// the namespace to work in.
func (k *kubeFlags) clients() (*clients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: k.context}
	overrides.Context.Namespace = k.namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: namespace: %w", err)
	}
	cfg.UserAgent = "zmeshctl"
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	gc, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway API client: %w", err)
	}
	return &clients{kube: kc, gateway: gc, namespace: ns, config: cfg}, nil
}
