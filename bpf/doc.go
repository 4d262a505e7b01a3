// Package bpf will hold the eBPF sources of zmesh's capture (an sk_lookup
// program per pod network namespace), the committed bpf2go output and a small
// typed Load/Attach API. It imports nothing of zmesh's own.
package bpf
