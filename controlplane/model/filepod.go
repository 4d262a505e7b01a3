package model

import (
	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podUIDSpace is the UUIDv5 namespace of uids given to pods read from
// files.
var podUIDSpace = uuid.MustParse("0b6b9a3e-6f0e-4b8e-9c55-5a3c1a7e2d10")

// FilePodUID is the uid a Pod read from a file gets when it has none: a
// UUIDv5 of "namespace/name", so every component reading the same file
// (zmeshd, the node runner, the agent) agrees on it.
func FilePodUID(namespace, name string) types.UID {
	return types.UID(uuid.NewSHA1(podUIDSpace, []byte(namespace+"/"+name)).String())
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
