package noderunner

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// DebianCNI is where Debian's containernetworking-plugins puts the
// reference plugins (bridge, host-local, ...).
const DebianCNI = "/usr/lib/cni"

// PrimaryConflist is the file InstallPrimaryCNI writes in the conf dir.
const PrimaryConflist = "10-podnet.conflist"

// InstallPrimaryCNI sets a node's CNI directories up as the cluster's own
// pod network would before the mesh arrives: the bridge and host-local
// plugins in binDir, and in confDir a conflist with a bridge (cni0, the
// gateway being podCIDR's first address, which the node's host namespace
// holds) and host-local IPAM over podCIDR keeping its state in ipamDir.
// zmesh-cni-agent then chains zmesh-cni into that conflist.
func InstallPrimaryCNI(binDir, confDir, ipamDir string, podCIDR netip.Prefix) error {
	for _, d := range []string{binDir, confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, p := range []string{"bridge", "host-local"} {
		src := filepath.Join(DebianCNI, p)
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("CNI plugin %s: %w (install containernetworking-plugins: make deps)", p, err)
		}
		if err := os.Symlink(src, filepath.Join(binDir, p)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]],
              "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
`, ipamDir, podCIDR.Masked().String(), podCIDR.Masked().Addr().Next().String())
	return os.WriteFile(filepath.Join(confDir, PrimaryConflist), []byte(conf), 0o644)
}

// Chain lists the plugins of the pod network list in confDir in the order
// ADD runs them, IPAM after its plugin (e.g. "bridge", "host-local",
// "zmesh-cni"); nil when the file is missing or not a conflist.
func Chain(confDir string) []string {
	b, err := os.ReadFile(filepath.Join(confDir, PrimaryConflist))
	if err != nil {
		return nil
	}
	var doc struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Type string `json:"type"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return nil
	}
	var out []string
	for _, p := range doc.Plugins {
		out = append(out, p.Type)
		if p.IPAM.Type != "" {
			out = append(out, p.IPAM.Type)
		}
	}
	return out
}
