package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/proc"
)

// path is one way from a client pod to the servers.
type path struct {
	name      string
	client    *netenv.NS
	http      netip.AddrPort // where fortio sends requests
	iperf     netip.AddrPort // where iperf3 connects
	proxies   []*proc.Proc   // processes whose CPU carries this path
	ztunnels  []*ztunnel     // mesh only
	clientPod string
}

// Ports the node-level proxies listen on.
const (
	stunnelHTTP, stunnelIperf       = 18080, 15201 // stunnel client, node-1
	stunnelTLSHTTP, stunnelTLSIperf = 18443, 15443 // stunnel server, node-2
	haproxyHTTP, haproxyIperf       = 28080, 25201 // haproxy, node-2
)

// startPeers starts the servers in both server pods (fortio and iperf3),
// the stunnel pair and haproxy, and returns the four paths.
func (e *env) startPeers(ctx context.Context, fortio string) ([]*path, error) {
	logs := filepath.Join(e.tmp, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	start := func(n *netenv.NS, name, bin string, args ...string) (*proc.Proc, error) {
		p, err := startIn(ctx, n, filepath.Join(logs, name+".log"), bin, args...)
		if err != nil {
			return nil, err
		}
		e.defer_(p.Stop)
		return p, nil
	}
	for _, s := range []podSpec{meshServer, plainServer} {
		n := e.pods[s.name]
		if _, err := start(n, s.name+"-fortio", fortio, "server", "-quiet",
			"-http-port", netip.AddrPortFrom(s.addr, httpPort).String(),
			"-grpc-port", "disabled", "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled"); err != nil {
			return nil, err
		}
		if _, err := start(n, s.name+"-iperf3", "iperf3", "-s", "-B", s.addr.String(), "-p", fmt.Sprint(iperfPort)); err != nil {
			return nil, err
		}
	}

	// stunnel: the two-hop TLS tunnel a user would build by hand. Mutual
	// TLS 1.3 with a private CA, like the mesh's HBONE hop.
	pki := filepath.Join(e.tmp, "stunnel-pki")
	if err := writePKI(pki); err != nil {
		return nil, err
	}
	n1, n2 := nodeAddrs[0], nodeAddrs[1]
	srv := plainServer.addr
	common := fmt.Sprintf("foreground = yes\npid =\nsyslog = no\ndebug = 3\nCAfile = %s\ncert = %s\nkey = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
		filepath.Join(pki, "ca.pem"), filepath.Join(pki, "cert.pem"), filepath.Join(pki, "key.pem"))
	clientConf := common + fmt.Sprintf("client = yes\n[http]\naccept = %s:%d\nconnect = %s:%d\n[iperf]\naccept = %s:%d\nconnect = %s:%d\n",
		n1, stunnelHTTP, n2, stunnelTLSHTTP, n1, stunnelIperf, n2, stunnelTLSIperf)
	serverConf := common + fmt.Sprintf("[http]\naccept = %s:%d\nconnect = %s:%d\n[iperf]\naccept = %s:%d\nconnect = %s:%d\n",
		n2, stunnelTLSHTTP, srv, httpPort, n2, stunnelTLSIperf, srv, iperfPort)
	var stunnels []*proc.Proc
	for i, conf := range []string{clientConf, serverConf} {
		f := filepath.Join(e.tmp, fmt.Sprintf("stunnel-%s.conf", nodeNames[i]))
		if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		p, err := start(e.hosts[i], "stunnel-"+nodeNames[i], "stunnel4", f)
		if err != nil {
			return nil, err
		}
		stunnels = append(stunnels, p)
	}

	// haproxy: one plain TCP hop on the server's node.
	hcfg := filepath.Join(e.tmp, "haproxy.cfg")
	if err := os.WriteFile(hcfg, []byte(fmt.Sprintf(`global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
listen http
  bind %s:%d
  server s %s:%d
listen iperf
  bind %s:%d
  server s %s:%d
`, n2, haproxyHTTP, srv, httpPort, n2, haproxyIperf, srv, iperfPort)), 0o644); err != nil {
		return nil, err
	}
	hap, err := start(e.hosts[1], "haproxy", "haproxy", "-db", "-f", hcfg)
	if err != nil {
		return nil, err
	}

	pc, mc := e.pods[plainClient.name], e.pods[meshClient.name]
	paths := []*path{
		{name: report.Direct, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(srv, httpPort), iperf: netip.AddrPortFrom(srv, iperfPort)},
		{name: report.Mesh, client: mc, clientPod: meshClient.name, http: netip.AddrPortFrom(meshServer.addr, httpPort), iperf: netip.AddrPortFrom(meshServer.addr, iperfPort),
			ztunnels: e.zts, proxies: []*proc.Proc{e.zts[0].Proc, e.zts[1].Proc}},
		{name: report.Stunnel, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(n1, stunnelHTTP), iperf: netip.AddrPortFrom(n1, stunnelIperf), proxies: stunnels},
		{name: report.HAProxy, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(n2, haproxyHTTP), iperf: netip.AddrPortFrom(n2, haproxyIperf), proxies: []*proc.Proc{hap}},
	}
	// Every listener up and every path answering before anything is timed.
	for _, p := range paths {
		for _, q := range p.proxies {
			if !q.Running() {
				return nil, fmt.Errorf("%s exited:\n%s", q.Name, proc.Tail(q.Log(), 20))
			}
		}
		if err := waitFor(ctx, 20*time.Second, func() bool { return probe(ctx, p) == nil }); err != nil {
			return nil, fmt.Errorf("path %s does not answer: %v", p.name, probe(ctx, p))
		}
	}
	return paths, nil
}

// probe sends one HTTP request over the path and checks the answer.
func probe(ctx context.Context, p *path) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := p.client.Dial(ctx, "tcp", p.http.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n < 12 || string(buf[:12]) != "HTTP/1.1 200" {
		return fmt.Errorf("path %s: answer %q: %v", p.name, buf[:n], err)
	}
	return nil
}

// writePKI writes a CA and one certificate (client and server use) signed
// by it, for stunnel: ECDSA P-256, like the mesh's SVIDs.
func writePKI(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench node"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{nodeAddrs[0].AsSlice(), nodeAddrs[1].AsSlice()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	for name, blk := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return err
		}
	}
	return nil
}
