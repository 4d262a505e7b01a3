package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// waypointPodLabel names a waypoint's pods (the Gateway's name), as the
// deployer labels them.
const waypointPodLabel = "gateway.networking.k8s.io/gateway-name"

// forwardToWaypoint port-forwards a local port to port of a ready pod of
// the waypoint name in the clients' namespace, through the API server, as
// istioctl reaches a proxy's admin port. It returns the local address and
// a function that ends the forward.
func (c *cli) forwardToWaypoint(ctx context.Context, cl *clients, name string, port int) (string, func(), error) {
	pods, err := cl.kube.CoreV1().Pods(cl.namespace).List(ctx, metav1.ListOptions{LabelSelector: waypointPodLabel + "=" + name})
	if err != nil {
		return "", nil, fmt.Errorf("pods of waypoint %s/%s: %w", cl.namespace, name, err)
	}
	pod := runningPod(pods.Items)
	if pod == nil {
		return "", nil, fmt.Errorf("waypoint %s/%s has no running pod (label %s=%s)", cl.namespace, name, waypointPodLabel, name)
	}
	return forwardToPod(ctx, cl, pod, port)
}

// ztunnelPodLabel selects the ztunnel DaemonSet's pods, as the chart
// labels them.
const ztunnelPodLabel = "app=ztunnel"

// forwardToZtunnel port-forwards a local port to port of the running
// ztunnel pod on node, a pod of the DaemonSet in namespace ns. Only the
// pod's own admin listener is reached: it binds the pod's loopback, which
// the forward dials inside the pod's network namespace.
func (c *cli) forwardToZtunnel(ctx context.Context, cl *clients, ns, node string, port int) (string, func(), error) {
	pods, err := cl.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: ztunnelPodLabel,
		FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return "", nil, fmt.Errorf("ztunnel pods of node %s in namespace %s: %w", node, ns, err)
	}
	pod := runningPod(pods.Items)
	if pod == nil {
		return "", nil, fmt.Errorf("node %s has no running ztunnel pod (label %s in namespace %s)", node, ztunnelPodLabel, ns)
	}
	return forwardToPod(ctx, cl, pod, port)
}

// runningPod is the first pod that runs and is not being deleted.
func runningPod(pods []corev1.Pod) *corev1.Pod {
	for i := range pods {
		if p := &pods[i]; p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return p
		}
	}
	return nil
}

// forwardToPod port-forwards 127.0.0.1:<free port> to port of pod.
func forwardToPod(ctx context.Context, cl *clients, pod *corev1.Pod, port int) (string, func(), error) {
	req := cl.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward")
	rt, upgrader, err := spdy.RoundTripperFor(cl.config)
	if err != nil {
		return "", nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	end := func() {
		close(stop)
		<-done
	}
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New("the forward ended")
		}
		return "", nil, fmt.Errorf("port-forward to %s/%s:%d: %w", pod.Namespace, pod.Name, port, err)
	case <-time.After(30 * time.Second):
		end()
		return "", nil, fmt.Errorf("port-forward to %s/%s:%d: not ready in 30s", pod.Namespace, pod.Name, port)
	case <-ctx.Done():
		end()
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		end()
		return "", nil, fmt.Errorf("port-forward to %s/%s:%d: local port: %v", pod.Namespace, pod.Name, port, err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), end, nil
}
