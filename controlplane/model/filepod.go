package model

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/zmesh/zmesh/api/filepod"
)

// FilePodUID is the uid a Pod read from a file gets when it has none: a
// UUIDv5 of "namespace/name", so every component reading the same file
// (zmeshd, the node runner, the agent) agrees on it.
func FilePodUID(namespace, name string) types.UID {
	return types.UID(filepod.UID(namespace, name))
}

// NormalizeFilePod completes a Pod read from a file, where no kubelet
// reports status: a missing uid becomes FilePodUID, and a pod with
// status.podIP and no phase is Running and Ready. It changes p in place.
func NormalizeFilePod(p *corev1.Pod) {
	if p.UID == "" {
		p.UID = FilePodUID(p.Namespace, p.Name)
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.Status.PodIP == "" {
		return
	}
	if len(p.Status.PodIPs) == 0 {
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	if p.Status.Phase == "" {
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
	}
}
