// Package privileges checks, on the real kernel, that the capabilities the
// Helm chart gives ztunnel are the ones its code needs: with exactly those
// it opens its sockets in a pod's network namespace and steers them into
// the pod's capture maps, and without any one of them it cannot. It has no
// code of its own, only that test.
package privileges
