// Package cni will hold the chained CNI plugin (cmdAdd/cmdDel/cmdCheck), the
// node agent (install, reconcile, enrolment of running pods) and the
// redirection setup inside each pod's network namespace (capture issue).
// It must not import controlplane/, and the plugin binary stays free of k8s.io/*.
package cni
