package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/zmesh/zmesh/cni/cniapi"
)

// Main runs the plugin (cmd/zmesh-cni).
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "zmesh-cni: ambient capture for zmesh")
}

// load reads what every command needs: the configuration and the pod
// (from CNI_ARGS, the netns path and the previous result's IPs).
func load(args *skel.CmdArgs) (*Config, *cniapi.Pod, error) {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	var k k8sArgs
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return nil, nil, fmt.Errorf("zmesh-cni: CNI_ARGS: %w", err)
	}
	pod := &cniapi.Pod{
		UID:         string(k.K8S_POD_UID),
		Name:        string(k.K8S_POD_NAME),
		Namespace:   string(k.K8S_POD_NAMESPACE),
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
	}
	if conf.PrevResult != nil {
		res, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, nil, fmt.Errorf("zmesh-cni: prevResult: %w", err)
		}
		for _, ip := range res.IPs {
			pod.IPs = append(pod.IPs, ip.Address.IP.String())
		}
	}
	return conf, pod, nil
}

// passThrough returns the previous result unchanged, in the configuration's
// version (a chained plugin must return what it was given).
func passThrough(conf *Config) error {
	if conf.PrevResult == nil {
		return types.PrintResult(&current.Result{CNIVersion: current.ImplementedSpecVersion}, conf.CNIVersion)
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, pod, err := load(args)
	if err != nil {
		return err
	}
	// Not a Kubernetes pod (no K8S_ args) or an excluded namespace: not ours.
	if pod.Namespace == "" || pod.Name == "" || conf.excluded(pod.Namespace) {
		return passThrough(conf)
	}
	if conf.PrevResult == nil {
		return errors.New("zmesh-cni: no prevResult: chain zmesh-cni after the plugin that assigns the pod's IPs")
	}
	if pod.UID == "" {
		return errors.New("zmesh-cni: CNI_ARGS: K8S_POD_UID missing (the runtime must pass the pod's uid)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout())
	defer cancel()
	var answer cniapi.AddResponse
	err = cniapi.NewClient(conf.AgentSocket, conf.timeout()).Do(ctx, cniapi.PathAdd, pod, &answer)
	switch {
	case errors.Is(err, cniapi.ErrUnreachable) && conf.FailurePolicy == FailOpen:
		fmt.Fprintf(stderr, "zmesh-cni: %v; failure_policy=allow: pod %s/%s starts without capture\n", err, pod.Namespace, pod.Name)
	case err != nil:
		return fmt.Errorf("zmesh-cni: capture pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return passThrough(conf)
}

// cmdDel is idempotent and never fails on a missing agent or netns: the
// runtime must always be able to delete.
func cmdDel(args *skel.CmdArgs) error {
	conf, pod, err := load(args)
	if err != nil {
		// A configuration error is the runtime's to see; anything about
		// the pod itself must not block its deletion.
		if _, perr := parseConfig(args.StdinData); perr != nil {
			return perr
		}
		return nil
	}
	if pod.UID == "" || conf.excluded(pod.Namespace) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout())
	defer cancel()
	if err := cniapi.NewClient(conf.AgentSocket, conf.timeout()).Do(ctx, cniapi.PathDel, pod, nil); err != nil {
		var ne net.Error
		if errors.Is(err, cniapi.ErrUnreachable) || errors.As(err, &ne) {
			fmt.Fprintf(stderr, "zmesh-cni: DEL of %s/%s: %v (ignored)\n", pod.Namespace, pod.Name, err)
			return nil
		}
		return fmt.Errorf("zmesh-cni: release pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// cmdCheck asks the agent whether the capture of an ambient pod is intact.
func cmdCheck(args *skel.CmdArgs) error {
	conf, pod, err := load(args)
	if err != nil {
		return err
	}
	if pod.UID == "" || conf.excluded(pod.Namespace) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout())
	defer cancel()
	if err := cniapi.NewClient(conf.AgentSocket, conf.timeout()).Do(ctx, cniapi.PathCheck, pod, nil); err != nil {
		return fmt.Errorf("zmesh-cni: check pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
