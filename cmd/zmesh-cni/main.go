// Command zmesh-cni is the chained CNI plugin that hands ambient pods to
// zmesh-cni-agent; see cni/plugin.
package main

import "github.com/zmesh/zmesh/cni/plugin"

func main() { plugin.Main() }
